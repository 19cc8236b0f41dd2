"""Chat with a chat template (tencentpretrain/chat.py, generate_lm.py --chat_template,
--interactive): each turn's prompt is the whole conversation rendered as in training, the
history drops the oldest pairs (never the system prompt), answers stop at the end-of-turn
token as well as eos. Tokenizers: byte-level BPE with ChatML's special tokens, trained here."""
import io
import os
import sys

import pytest
import torch

import tencentpretrain
from tencentpretrain.chat import ChatSession, load_chat_template, stop_ids
from tencentpretrain.chat_templates import TEMPLATES, encode_conversation
from tencentpretrain.generation import GenerationError, SamplingOptions, TextGenerator, generate
from tencentpretrain.tokenizer import load_tokenizer
from tests.conftest import ROOT, tiny_checkpoint
from tests.test_hf_tokenizer import QWEN_SPLIT, train_byte_level_bpe, write_folder
from tests.training_support import DEMO_CORPUS

TINY = os.path.join(ROOT, "models", "llama", "tiny_config.json")
GREEDY = SamplingOptions(top_k=1)
SYSTEM = "You are a terse assistant."
CHATML_CONFIG = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                 "tokenizer_class": "PreTrainedTokenizerFast"}


def chatml_folder(folder, lines=None, vocab_size=700):
    """A Qwen-like tokenizer folder (no bos, eos <|endoftext|>, ChatML's special tokens)."""
    if lines is None:
        with open(DEMO_CORPUS, encoding="utf-8") as f:
            lines = f.readlines()
    tok = train_byte_level_bpe(lines, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], QWEN_SPLIT,
                               nfc=True, vocab_size=vocab_size)
    return write_folder(str(folder), tok, tokenizer_config=CHATML_CONFIG)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return chatml_folder(tmp_path_factory.mktemp("chat") / "qwen")


@pytest.fixture(scope="module")
def tokenizer(folder):
    return load_tokenizer(None, folder)


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    return tencentpretrain.build_model(TINY, tokenizer.vocab_size).eval()


def session(model, tokenizer, seq_length=256, max_new_tokens=6, system=SYSTEM, name="chatml"):
    generator = TextGenerator(model, tokenizer, seq_length, max_new_tokens, GREEDY)
    return ChatSession(generator, load_chat_template(name, tokenizer), system)


def test_each_turn_is_the_whole_conversation_rendered(model, tokenizer):
    """Turn k's prompt == the conversation so far + the new user turn, rendered as the
    conversation processor renders it (with the generation prompt), and it starts with the
    training ids of the conversation so far."""
    chat = session(model, tokenizer)
    template = TEMPLATES["chatml"]
    users = ["What is two plus two?", "And three plus three?", "Thanks!"]
    for k, user in enumerate(users):
        history = list(chat.history)
        prompt = chat.prompt_ids(user)
        assert prompt == encode_conversation(template, tokenizer, SYSTEM,
                                             history + [(user, None)], True).ids
        if history:
            trained = encode_conversation(template, tokenizer, SYSTEM, history).ids
            assert prompt[:len(trained)] == trained
        answer = chat.reply(user)
        assert chat.history[-1] == (user, answer) and len(chat.history) == k + 1
        assert chat.last_ids == generate(model, [prompt], 6, 256, eos_id=chat.generator.stop_ids,
                                         options=GREEDY)[0]


def test_history_truncation_keeps_the_system_prompt(model, tokenizer):
    template = TEMPLATES["chatml"]
    pairs = [(f"Question number {i}: what is {i} plus {i}?", f"It is {2 * i}.") for i in range(8)]
    whole = encode_conversation(template, tokenizer, SYSTEM, pairs + [("Last one?", None)], True).ids
    seq_length = len(whole) // 2
    chat = session(model, tokenizer, seq_length=seq_length, max_new_tokens=4)
    chat.history = list(pairs)
    prompt = chat.prompt_ids("Last one?")
    kept = len(chat.history)
    assert 0 < kept < len(pairs) and chat.dropped == len(pairs) - kept
    assert chat.history == pairs[-kept:]  # the oldest pairs went first
    assert prompt == encode_conversation(template, tokenizer, SYSTEM, pairs[-kept:] + [("Last one?", None)],
                                         True).ids
    assert len(prompt) + chat.reserve <= seq_length
    longer = encode_conversation(template, tokenizer, SYSTEM, pairs[-kept - 1:] + [("Last one?", None)], True).ids
    assert len(longer) + chat.reserve > seq_length  # no more dropped than needed
    system_ids = encode_conversation(template, tokenizer, SYSTEM, []).ids
    assert prompt[:len(system_ids)] == system_ids
    assert tokenizer.decode(prompt).startswith("system\n" + SYSTEM)
    # a turn that does not fit even alone: one line, and the system prompt is not dropped
    with pytest.raises(GenerationError, match="no room for new tokens"):
        chat.prompt_ids("word " * seq_length)


def test_stops_at_the_end_of_turn_token(tokenizer):
    """The session stops at <|im_end|> (and at eos): the model below is made to say
    <|im_end|> where it would say a token of its free run; the answer ends right before."""
    im_end = tokenizer.hf.token_to_id("<|im_end|>")
    assert stop_ids(TEMPLATES["chatml"], tokenizer) == [tokenizer.eos_id, im_end]
    torch.manual_seed(1)
    model = tencentpretrain.build_model(TINY, tokenizer.vocab_size).eval()
    chat = session(model, tokenizer, max_new_tokens=12)
    prompt = chat.prompt_ids("Hello there")
    free = generate(model, [prompt], 12, options=GREEDY)[0]
    target = free[4]
    with torch.no_grad():  # <|im_end|> outscores `target` wherever target would win
        out = model.target.lm.output_layer.weight
        out[im_end] = out[target] * 3
    run = generate(model, [prompt], 12, options=GREEDY)[0]
    assert im_end in run and run.index(im_end) <= 4
    answer = chat.reply("Hello there")
    assert chat.last_ids == run[:run.index(im_end)]
    assert answer == tokenizer.decode(run[:run.index(im_end)])
    # a list of stop ids in generate(): the first one met ends the row
    assert generate(model, [prompt], 12, eos_id=[run[1], im_end], options=GREEDY)[0] == run[:1]


def test_cli_chat_template_and_interactive_chat(tmp_path, folder, tokenizer, capsys, monkeypatch):
    """generate_lm.py --chat_template chatml --system_prompt: a file's prompts are one-turn
    conversations; --interactive chats over turns, answering as a ChatSession does."""
    from inference import run
    from inference.generate_lm import main
    from inference.text_io import unescape_line
    path = tmp_path / "tiny.bin"
    config = tiny_checkpoint(path, vocab_size=tokenizer.vocab_size)
    model = tencentpretrain.load_model(config, str(path)).eval()
    users = ["What is two plus two?", "And three plus three?"]
    (tmp_path / "p.txt").write_text(users[0] + "\n")
    common = ["--load_model_path", str(path), "--config_path", config, "--tokenizer_path", folder,
              "--greedy", "--max_new_tokens", "5", "--seq_length", "128",
              "--chat_template", "chatml", "--system_prompt", SYSTEM]

    def cli(argv):
        try:
            run(lambda: main(argv))
            return 0
        except SystemExit as e:
            return e.code
    assert cli(common + ["--test_path", str(tmp_path / "p.txt"),
                         "--prediction_path", str(tmp_path / "o.txt")]) == 0
    capsys.readouterr()
    expected = session(model, tokenizer, 128, 5)
    answers = [expected.reply(u) for u in users]
    assert unescape_line((tmp_path / "o.txt").read_text(encoding="utf-8").rstrip("\n")) == answers[0]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(users) + "\n"))
    assert cli(common + ["--interactive"]) == 0
    out = capsys.readouterr().out
    assert out == "".join(f"> {a}\n" for a in answers) + "> \n"
    # options checked before the model loads
    assert cli(common[:-4] + ["--chat_template", "nope", "--interactive"]) == 2
    assert "--chat_template nope: unknown" in capsys.readouterr().err


# --- the HF export: apply_chat_template + generate == our chat --------------------------------

def export(tmp_path, model, tokenizer_args, chat_template):
    """The model as an HF folder through the export script, with --chat_template."""
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    from tencentpretrain.utils.weights import save_state_dict_file
    save_state_dict_file(model.state_dict(), str(tmp_path / "m.bin"))
    out = tmp_path / "hf"
    main(["--input_model_path", str(tmp_path / "m.bin"), "--config_path", TINY,
          "--output_model_path", str(out), *tokenizer_args, "--chat_template", chat_template])
    return str(out)


def assert_hf_chat_equals_ours(folder, model, tokenizer, chat, users, max_new_tokens):
    transformers = pytest.importorskip("transformers")
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    messages = [{"role": "system", "content": chat.system}] if chat.system is not None else []
    stopped = 0
    for user in users:
        messages.append({"role": "user", "content": user})
        prompt = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        assert prompt == chat.prompt_ids(user)
        ids = torch.tensor([prompt])
        out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_id)
        hf_new = out[0, len(prompt):].tolist()  # ends with the stop id when it stopped
        answer = chat.reply(user)
        if hf_new and hf_new[-1] in chat.generator.stop_ids:
            stopped += 1
            hf_new = hf_new[:-1]
        assert hf_new == chat.last_ids
        messages.append({"role": "assistant", "content": answer})
    return stopped


def test_hf_export_chat_equals_our_chat(tmp_path, folder, tokenizer):
    """--chat_template chatml in the export: chat_template in tokenizer_config.json, [eos,
    <|im_end|>] in generation_config.json; transformers' apply_chat_template(add_generation_prompt)
    + greedy generate give our prompt ids and answers, stopping at <|im_end|> as ours does."""
    import json
    im_end = tokenizer.hf.token_to_id("<|im_end|>")
    torch.manual_seed(1)
    model = tencentpretrain.build_model(TINY, tokenizer.vocab_size).eval()
    first = session(model, tokenizer).prompt_ids("What is two plus two?")
    target = generate(model, [first], 8, options=GREEDY)[0][3]
    with torch.no_grad():  # <|im_end|> wins where `target` would: answers end at the end of turn
        out = model.target.lm.output_layer.weight
        out[im_end] = out[target] * 3
    out = export(tmp_path, model, ["--tokenizer_path", folder], "chatml")
    assert json.load(open(os.path.join(out, "generation_config.json")))["eos_token_id"] == \
        [tokenizer.eos_id, im_end]
    jinja = json.load(open(os.path.join(out, "tokenizer_config.json")))["chat_template"]
    assert "{% generation %}" not in jinja and "<|im_start|>assistant" in jinja
    chat = session(model, tokenizer, 256, 8)
    users = ["What is two plus two?", "And three plus three?", "Thanks!"]
    stopped = assert_hf_chat_equals_ours(out, model, tokenizer, chat, users, 8)
    assert stopped >= 1


def test_export_template_from_the_dataset_record(tmp_path, folder, tokenizer):
    """--chat_template DATASET: the template recorded in meta.json (the one tuned on)."""
    import json

    from tencentpretrain.chat import export_template
    from tencentpretrain.chat_templates import ChatTemplateError
    from tencentpretrain.data import preprocess
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "Hello."}]}) + "\n")
    preprocess(str(corpus), None, str(tmp_path / "ds"), tokenizer_path=folder, progress=False,
               data_processor="conversation", chat_template="chatml")
    assert export_template(str(tmp_path / "ds"), tokenizer) == export_template("chatml", tokenizer)
    with pytest.raises(ChatTemplateError, match="neither a template name"):
        export_template(str(tmp_path / "missing"), tokenizer)


def test_chatml_on_a_llama_sentencepiece_model(tmp_path):
    """LLaMA's SentencePiece model lacks ChatML's tokens: preprocess says exactly how to add
    them; extend_vocab.py --add_special_tokens appends them (rows: the mean of the base rows);
    then preprocessing, our chat and the HF export's apply_chat_template + generate agree."""
    import json

    import sentencepiece as spm

    from scripts.extend_vocab import main as extend_main
    from tencentpretrain.chat_templates import ChatTemplateError
    from tencentpretrain.data import TokenDataset, preprocess
    from tencentpretrain.utils.weights import load_state_dict_file
    from tests.training_support import LLAMA_SPM
    corpus = tmp_path / "c.jsonl"
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello! 你好"}]
    corpus.write_text(json.dumps({"messages": msgs}, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(ChatTemplateError) as error:
        preprocess(str(corpus), LLAMA_SPM, str(tmp_path / "x"), data_processor="conversation",
                   chat_template="chatml", progress=False)
    assert (f'scripts/extend_vocab.py --base_spm_model_path {LLAMA_SPM} --add_special_tokens '
            f'"<|im_start|>,<|im_end|>" --output_spm_model_path') in str(error.value)
    vocab = spm.SentencePieceProcessor(model_file=LLAMA_SPM).vocab_size()
    config = tiny_checkpoint(tmp_path / "m.bin", vocab_size=vocab)
    new_spm, new_model = str(tmp_path / "chatml.model"), str(tmp_path / "m_chatml.bin")
    extend_main(["--input_model_path", str(tmp_path / "m.bin"), "--config_path", config,
                 "--base_spm_model_path", LLAMA_SPM, "--add_special_tokens", "<|im_start|>,<|im_end|>",
                 "--output_spm_model_path", new_spm, "--output_model_path", new_model])
    old, new = load_state_dict_file(str(tmp_path / "m.bin")), load_state_dict_file(new_model)
    for name in ("embedding.word.embedding.weight", "target.lm.output_layer.weight"):
        assert new[name].shape[0] == vocab + 2
        assert torch.equal(new[name][:vocab], old[name])
        for row in (vocab, vocab + 1):
            torch.testing.assert_close(new[name][row], old[name].float().mean(0).to(old[name].dtype))
    sp = spm.SentencePieceProcessor(model_file=new_spm)
    assert [sp.PieceToId(t) for t in ("<|im_start|>", "<|im_end|>")] == [vocab, vocab + 1]
    assert sp.EncodeAsIds("Hello world") == spm.SentencePieceProcessor(model_file=LLAMA_SPM).EncodeAsIds("Hello world")
    preprocess(str(corpus), new_spm, str(tmp_path / "ds"), data_processor="conversation",
               chat_template="chatml", progress=False)
    tokenizer = load_tokenizer(new_spm)
    sample = TokenDataset(str(tmp_path / "ds"))[0]
    encoded = encode_conversation(TEMPLATES["chatml"], tokenizer, SYSTEM, [("Hi there", "Hello! 你好")])
    assert sample.tokens.tolist() == encoded.ids and vocab + 1 in encoded.ids
    model = tencentpretrain.load_model(config, new_model).eval()
    out = export(tmp_path, model, ["--spm_model_path", new_spm], "chatml")
    chat = session(model, tokenizer, 128, 4)
    assert_hf_chat_equals_ours(out, model, tokenizer, chat, ["Hi there", "And 你好?"], 4)
