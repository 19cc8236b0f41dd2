"""Generation: greedy equals transformers, batched equals unbatched, the KV cache equals
full recomputation, sampling filters equal transformers' warpers, and the CLI."""
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import tencentpretrain
from tencentpretrain.config import load_config
from tencentpretrain.convert.hf_llama import config_to_hf, hf_to_tencentpretrain
from inference.text_io import escape_line, unescape_line
from tencentpretrain.generation import (SamplingOptions, TextGenerator, apply_repetition_penalty,
                                        filter_top_k_top_p, generate)
from tencentpretrain.loading import load_model_and_tokenizer
from tencentpretrain.prompts import ALPACA_TEMPLATE, build_prompt
from tencentpretrain.tokenizer import SpmTokenizer
from tencentpretrain.utils.weights import save_state_dict_file
from tests.conftest import ROOT, tiny_checkpoint
from tests.training_support import run_main

transformers = pytest.importorskip("transformers")

TINY = "models/llama/tiny_config.json"
TINY_GQA = "models/llama/tiny_gqa_config.json"
GENERATE = os.path.join(ROOT, "inference", "generate_lm.py")
GREEDY = SamplingOptions(top_k=1)
PROMPTS = ["The capital of France is", "Hello", "def fibonacci(n):\n    return",
           "Once upon a time, in a land far away, there lived"]


def random_models(config_path, vocab_size, seed=0):
    """A random HF LlamaForCausalLM and the same weights in our model."""
    config = load_config(os.path.join(ROOT, config_path))
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(**config_to_hf(config, vocab_size))).eval()
    ours = tencentpretrain.build_model(config, vocab_size).eval()
    ours.load_state_dict(hf_to_tencentpretrain(hf.state_dict(), config))
    return hf, ours


@pytest.fixture(scope="module")
def tokenizer(llama_spm):
    return SpmTokenizer(llama_spm)


@pytest.fixture(scope="module", params=[TINY, TINY_GQA])
def models(request, tokenizer):
    return random_models(request.param, tokenizer.vocab_size)


def encode(tokenizer, text):
    return [tokenizer.bos_id] + tokenizer.encode(text)


def hf_greedy(hf, prompt, max_new_tokens, eos_id):
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                      do_sample=False, eos_token_id=eos_id, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def test_greedy_equals_transformers(models, tokenizer):
    hf, ours = models
    for text in PROMPTS:
        prompt = encode(tokenizer, text)
        expected = hf_greedy(hf, prompt, 16, tokenizer.eos_id)
        got = generate(ours, [prompt], 16, eos_id=tokenizer.eos_id, options=GREEDY)[0]
        assert len(expected) == 16 and tokenizer.eos_id not in expected  # ran to the limit
        assert got == expected


def test_stops_at_eos_like_transformers(models, tokenizer):
    hf, ours = models
    prompt = encode(tokenizer, PROMPTS[0])
    free_run = generate(ours, [prompt], 16, options=GREEDY)[0]
    stop = next(i for i, t in enumerate(free_run) if i >= 3 and t not in free_run[:i])
    eos = free_run[stop]  # pretend this token is EOS: both must stop right there
    expected = hf_greedy(hf, prompt, 16, eos)
    assert expected == free_run[:stop + 1]
    assert generate(ours, [prompt], 16, eos_id=eos, options=GREEDY)[0] == free_run[:stop]


@pytest.mark.parametrize("options", [GREEDY, SamplingOptions(top_k=1, repetition_penalty=1.3)])
def test_batched_equals_unbatched(models, tokenizer, options):
    _, ours = models
    prompts = [encode(tokenizer, text) for text in PROMPTS]
    alone = [generate(ours, [p], 12, max_length=20, eos_id=tokenizer.eos_id, options=options)[0]
             for p in prompts]
    assert [len(a) for a in alone] == [min(12, 20 - len(p)) for p in prompts]  # rows end apart
    batched = generate(ours, prompts, 12, max_length=20, eos_id=tokenizer.eos_id,
                       options=options)
    assert batched == alone
    eos = alone[1][2]  # one row stops early at EOS, the others go on without it
    alone = [generate(ours, [p], 12, eos_id=eos, options=options)[0] for p in prompts]
    assert generate(ours, prompts, 12, eos_id=eos, options=options) == alone


def test_kv_cache_equals_full_recomputation(models, tokenizer):
    _, ours = models
    prompts = [encode(tokenizer, text) for text in PROMPTS[:3]]
    options = SamplingOptions(top_k=1, repetition_penalty=1.2)
    cached = generate(ours, prompts, 10, options=options)
    assert generate(ours, prompts, 10, options=options, use_cache=False) == cached


def test_streaming_callback_sees_every_token(models, tokenizer):
    _, ours = models
    prompts = [encode(tokenizer, text) for text in PROMPTS[:2]]
    seen = [[], []]
    out = generate(ours, prompts, 8, options=GREEDY, on_token=lambda row, t: seen[row].append(t))
    assert seen == out


def test_sampling_is_deterministic_with_a_seed(models, tokenizer):
    _, ours = models
    options = SamplingOptions(top_k=50, top_p=0.9, temperature=0.8, repetition_penalty=1.1)
    runs = [TextGenerator(ours, tokenizer, 64, 12, options, seed=seed).complete(
            [encode(tokenizer, PROMPTS[0])]) for seed in (3, 3, 4)]
    assert runs[0] == runs[1] != runs[2]


def test_filters_equal_transformers_warpers():
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                        TopKLogitsWarper, TopPLogitsWarper)
    logits = torch.randn(3, 200, generator=torch.Generator().manual_seed(0)) * 3
    ids = torch.randint(0, 200, (3, 10), generator=torch.Generator().manual_seed(1))
    for k in (1, 5, 50):
        assert torch.equal(filter_top_k_top_p(logits, top_k=k), TopKLogitsWarper(k)(ids, logits))
    for p in (0.1, 0.5, 0.9):
        assert torch.equal(filter_top_k_top_p(logits, top_p=p).isinf(),
                           TopPLogitsWarper(p)(ids, logits).isinf())
    seen = torch.zeros(3, 200, dtype=torch.bool).scatter_(1, ids, True)
    assert torch.allclose(apply_repetition_penalty(logits, seen, 1.3),
                          RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone()))


def test_alpaca_template_matches_preprocessed_prompt(tmp_path, tokenizer, llama_spm):
    """--prompt_template alpaca gives the prompt tokens the alpaca data processor trains on."""
    from tencentpretrain.data import TokenDataset, preprocess
    (tmp_path / "a.jsonl").write_text('{"instruction": "Name a colour.", "input": "", '
                                      '"output": "Blue."}\n')
    preprocess(str(tmp_path / "a.jsonl"), llama_spm, str(tmp_path / "ds"),
               data_processor="alpaca", seq_length=128, progress=False)
    sample = TokenDataset(str(tmp_path / "ds"))[0]
    _, ours = random_models(TINY, tokenizer.vocab_size)
    generator = TextGenerator(ours, tokenizer, 128, template=ALPACA_TEMPLATE)
    prompt = generator.encode("Name a colour.")
    assert prompt == sample.tokens[:sample.prompt_length].tolist()
    assert prompt == encode(tokenizer, build_prompt("Name a colour."))


def test_loads_every_weights_format(tmp_path, llama_spm):
    """.bin, .safetensors and pretrain.py's extension-less checkpoints; float32 on CPU."""
    config = tiny_checkpoint(tmp_path / "tiny.bin")
    state = torch.load(tmp_path / "tiny.bin", weights_only=True)
    save_state_dict_file(state, str(tmp_path / "tiny.safetensors"))
    save_state_dict_file(state, str(tmp_path / "llama_zh_7b-5000"))
    outputs = []
    for name in ("tiny.bin", "tiny.safetensors", "llama_zh_7b-5000"):
        model, tokenizer = load_model_and_tokenizer(config, str(tmp_path / name), llama_spm)
        assert next(model.parameters()).dtype == torch.float32
        outputs.append(generate(model, [encode(tokenizer, "Hi")], 5, options=GREEDY))
    assert outputs[0] == outputs[1] == outputs[2]


def test_escape_round_trip():
    text = 'line one\nline "two"\\n literal\r\n'
    assert "\n" not in escape_line(text) and "\r" not in escape_line(text)
    assert escape_line("a\nb\\c") == "a\\nb\\\\c"
    assert unescape_line(escape_line(text)) == text


# --- command line (in-process, except one run that checks the real entry point) ----------

def run_cli(argv, capsys, stdin=None, monkeypatch=None):
    """(exit status, stdout, stderr) of generate_lm.py with ``argv``, in this process."""
    from inference.generate_lm import main
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return run_main(main, argv, capsys)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny.bin"
    return path, tiny_checkpoint(path)


def cli_args(checkpoint, llama_spm, prompts, out, *extra):
    path, config = checkpoint
    return ["--load_model_path", path, "--config_path", config, "--spm_model_path", llama_spm,
            "--test_path", prompts, "--prediction_path", out, *extra]


def test_cli_entry_point(tmp_path, checkpoint, llama_spm, capsys):
    (tmp_path / "p.txt").write_text("Hello\n")
    out = tmp_path / "new" / "folder" / "o.txt"  # missing folders are made
    args = cli_args(checkpoint, llama_spm, tmp_path / "p.txt", out, "--greedy",
                    "--max_new_tokens", "3")
    ok = subprocess.run([sys.executable, GENERATE, *map(str, args)], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stderr.splitlines()[-1] == f"wrote 1 continuation to {out}"
    assert len(out.read_text(encoding="utf-8").splitlines()) == 1
    # a missing file: exit 2 and one line (in this process, through the same error path)
    status, _, err = run_cli(args[:6] + ["--test_path", tmp_path / "missing.txt",
                                         "--prediction_path", tmp_path / "o.txt"], capsys)
    assert status == 2
    assert err.splitlines() == [f"error: --test_path {tmp_path / 'missing.txt'}: "
                                "No such file or directory"]


def test_cli_batched_file_equals_one_at_a_time(tmp_path, checkpoint, llama_spm, tokenizer,
                                               capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:3]).replace("\n    ", " ") + "\n")
    outputs = {}
    for name, extra in [("one", ["--greedy", "--batch_size", "1"]),
                        ("three", ["--top_k", "1", "--batch_size", "3"])]:
        status, _, err = run_cli(cli_args(checkpoint, llama_spm, prompts, tmp_path / name,
                                          "--max_new_tokens", "10", *extra), capsys)
        assert status == 0, err
        outputs[name] = (tmp_path / name).read_text(encoding="utf-8").split("\n")
    assert len(outputs["one"]) == 4 and outputs["one"][-1] == ""  # 3 lines
    assert outputs["one"] == outputs["three"]
    # each line holds the decoded new tokens only
    model = tencentpretrain.load_model(checkpoint[1], str(checkpoint[0]))
    first = encode(tokenizer, prompts.read_text().split("\n")[0])
    new = generate(model, [first], 10, eos_id=tokenizer.eos_id, options=GREEDY)[0]
    assert unescape_line(outputs["one"][0]) == tokenizer.decode(new)


def test_cli_interactive_streams_the_same_answer(tmp_path, checkpoint, llama_spm, capsys,
                                                 monkeypatch):
    (tmp_path / "p.txt").write_text(PROMPTS[0] + "\n")
    args = cli_args(checkpoint, llama_spm, tmp_path / "p.txt", tmp_path / "out.txt", "--greedy",
                    "--max_new_tokens", "10")
    assert run_cli(args, capsys)[0] == 0
    status, out, err = run_cli(args[:6] + ["--interactive", "--greedy", "--max_new_tokens", "10"],
                               capsys, stdin=PROMPTS[0] + "\n", monkeypatch=monkeypatch)
    assert status == 0, err
    answer = unescape_line((tmp_path / "out.txt").read_text(encoding="utf-8").rstrip("\n"))
    assert out == f"> {answer}\n> \n"


def one_line_error(result):
    status, _, err = result
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_errors(tmp_path, checkpoint, llama_spm, capsys):
    path, config = checkpoint
    good = tmp_path / "good.txt"
    good.write_text("Hello\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    message = one_line_error(run_cli(cli_args(checkpoint, llama_spm, tmp_path / "empty.txt",
                                              tmp_path / "o"), capsys))
    assert "no prompts" in message
    message = one_line_error(run_cli(cli_args(checkpoint, llama_spm, good,
                                              good / "o.txt"), capsys))  # under a file
    assert message == f"error: --prediction_path {good / 'o.txt'}: cannot create its folder (File exists)"
    (tmp_path / "long.txt").write_text("short\n" + "word " * 40 + "\n")
    message = one_line_error(run_cli(cli_args(checkpoint, llama_spm, tmp_path / "long.txt",
                                              tmp_path / "o", "--seq_length", "16"), capsys))
    assert "long.txt:2" in message and "--seq_length 16" in message
    needed = int(re.search(r"it needs --seq_length (\d+) or more", message).group(1))
    assert needed == 1 + len(SpmTokenizer(llama_spm).encode("word " * 40)) + 1  # bos, one new
    small = tmp_path / "small.bin"
    tiny_checkpoint(small, vocab_size=320)
    message = one_line_error(run_cli(cli_args((small, config), llama_spm, good, tmp_path / "o"),
                                     capsys))
    assert "320" in message and "32000" in message
    message = one_line_error(run_cli(cli_args((path, os.path.join(ROOT, TINY_GQA)), llama_spm,
                                              good, tmp_path / "o"), capsys))
    assert "linear_layers.1.weight" in message and "(64, 64)" in message and "(16, 64)" in message
    message = one_line_error(run_cli(cli_args((good, config), llama_spm, good, tmp_path / "o"),
                                     capsys))
    assert "not a weights file" in message
    message = one_line_error(run_cli(cli_args(checkpoint, llama_spm, good, tmp_path / "o",
                                              "--top_p", "1.5"), capsys))
    assert "--top_p" in message


# --- prompt records: .jsonl / .json --test_path -------------------------------------------------

INSTRUCTIONS = [{"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"},
                {"instruction": "Name a colour.", "input": "", "output": "Blue."},
                {"instruction": "Count to three.", "output": "1 2 3"}]


@pytest.mark.parametrize("template_file", [False, True])
def test_instruction_records_render_as_preprocessing_does(tmp_path, tokenizer, llama_spm,
                                                          template_file):
    """Each record's prompt ids equal the prompt the alpaca processor stores for it, with the
    default template and with a template file; "input" is used, not dropped."""
    from inference.text_io import encode_prompts
    from tencentpretrain.data import TokenDataset, preprocess
    from tencentpretrain.prompts import load_template
    records = tmp_path / "r.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in INSTRUCTIONS) + "\n")
    template, options = ALPACA_TEMPLATE, {}
    if template_file:
        (tmp_path / "t.json").write_text(json.dumps({"prompt_input": "Q: {instruction} [{input}]\nA:",
                                                     "prompt_no_input": "Q: {instruction}\nA:"}))
        template = load_template(str(tmp_path / "t.json"))
        options["prompt_template"] = str(tmp_path / "t.json")
    preprocess(str(records), llama_spm, str(tmp_path / "ds"), data_processor="alpaca",
               seq_length=128, progress=False, **options)
    dataset = TokenDataset(str(tmp_path / "ds"))
    stored = [s.tokens[:s.prompt_length].tolist() for s in (dataset[i] for i in range(3))]
    _, ours = random_models(TINY, tokenizer.vocab_size)
    generator = TextGenerator(ours, tokenizer, 128, template=template if template_file else None)
    assert encode_prompts(generator, str(records)) == stored
    assert "Good morning" in tokenizer.decode(stored[0])
    # the same records as a JSON array
    (tmp_path / "r.json").write_text(json.dumps(INSTRUCTIONS))
    assert encode_prompts(generator, str(tmp_path / "r.json")) == stored


def test_cli_jsonl_prompts(tmp_path, checkpoint, llama_spm, capsys):
    """A {"prompt"} record is a text line; an instruction record is rendered; one output line
    per record (blank lines skipped); a text file works as before."""
    (tmp_path / "p.txt").write_text("Hello\n")
    (tmp_path / "p.jsonl").write_text(json.dumps(INSTRUCTIONS[0]) + "\n\n" +
                                      json.dumps({"prompt": "Hello"}) + "\n")
    outputs = {}
    for name in ("p.txt", "p.jsonl"):
        status, _, err = run_cli(cli_args(checkpoint, llama_spm, tmp_path / name,
                                          tmp_path / (name + ".out"), "--greedy",
                                          "--max_new_tokens", "5"), capsys)
        assert status == 0, err
        assert err.splitlines()[-1].startswith(f"wrote {2 if name == 'p.jsonl' else 1} ")
        outputs[name] = (tmp_path / (name + ".out")).read_text(encoding="utf-8").splitlines()
    assert len(outputs["p.jsonl"]) == 2 and outputs["p.jsonl"][1] == outputs["p.txt"][0]


@pytest.mark.parametrize("name, content, message", [
    ("r.jsonl", '{"instruction": "a"}\n{"input": "b"}\n',
     r'--test_path .*r\.jsonl:2: needs "instruction" \(and optionally "input"\) or "prompt"'),
    ("r.jsonl", '{"prompt": "a", "instruction": "b"}\n',
     r'--test_path .*r\.jsonl:1: both "prompt" and "instruction"; give one'),
    ("r.jsonl", '{"instruction": "a", "input": 3}\n',
     r'--test_path .*r\.jsonl:1: "input" is a number, not a string'),
    ("r.jsonl", '{"prompt": "a"}\n{"prompt": \n', r"--test_path .*r\.jsonl:2: broken JSON \(.*\)"),
    ("r.jsonl", b'{"prompt": "a\xff"}\n', r"--test_path .*r\.jsonl:1: invalid UTF-8 \(byte 0xff at column 14\)"),
    ("r.jsonl", "\n\n", r"--test_path .*r\.jsonl: no prompts \(the file is empty\)"),
    ("r.json", '[{"instruction": "a"}, {"output": "b"}]',
     r'--test_path .*r\.json:1: example 2: needs "instruction" \(and optionally "input"\) or "prompt"'),
    ("r.json", '[{"instruction": "a"}, 5]', r"--test_path .*r\.json:1: example 2: expected a JSON object, got int"),
])
def test_cli_prompt_record_errors(tmp_path, checkpoint, llama_spm, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    line = one_line_error(run_cli(cli_args(checkpoint, llama_spm, path, tmp_path / "o.txt"), capsys))
    assert re.fullmatch("error: " + message, line), line
    assert not (tmp_path / "o.txt").exists()
