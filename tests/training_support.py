"""Shared by the training tests (no tests here): small datasets made once per session from
../shared/data (or, without it, from the project's demo data with a tokenizer trained on it as
the quick start does), and ways to run pretrain.py in-process, as a script, or under deepspeed."""
import functools
import importlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import sentencepiece as spm

from tests.conftest import HAVE_SHARED_DATA, ROOT, SHARED_DATA, need_shared_data

TINY = os.path.join(ROOT, "models", "llama", "tiny_config.json")
T5_TINY = os.path.join(ROOT, "models", "t5-v1_1", "tiny_config.json")
ZERO3 = os.path.join(ROOT, "models", "deepspeed_zero3_config.json")
ZERO2 = os.path.join(ROOT, "models", "deepspeed_config.json")
DEMO_CORPUS = os.path.join(ROOT, "demo", "corpus.txt")
DEMO_INSTRUCTIONS = os.path.join(ROOT, "demo", "instructions.json")
_SESSION_DIR = tempfile.mkdtemp(prefix="tp_training_")


@functools.lru_cache(maxsize=None)
def demo_tokenizer(vocab_size=1000):
    """The quick start's tokenizer: 1000 BPE pieces on demo/corpus.txt (under a second)."""
    from tencentpretrain.vocab.train import train_tokenizer
    return train_tokenizer(DEMO_CORPUS, vocab_size,
                           os.path.join(_SESSION_DIR, f"demo_spm_{vocab_size}.model"),
                           log=lambda *a, **k: None)


# The tokenizer the training tests use: LLaMA's with ../shared, else the demo one.
LLAMA_SPM = (os.path.join(SHARED_DATA, "llama_tokenizer.model") if HAVE_SHARED_DATA
             else demo_tokenizer())
CHINESE_SPM = os.path.join(SHARED_DATA, "cluecorpussmall_spm.model")
# the corpora of the "lm" and "alpaca" datasets
LM_CORPUS, INSTRUCTIONS = ((os.path.join(SHARED_DATA, "c4_demo.jsonl"),
                            os.path.join(SHARED_DATA, "alpaca_zh_demo.json"))
                           if HAVE_SHARED_DATA else (DEMO_CORPUS, DEMO_INSTRUCTIONS))
OTHER_SPM = CHINESE_SPM if HAVE_SHARED_DATA else demo_tokenizer(900)  # not the datasets' one
VOCAB_SIZE = spm.SentencePieceProcessor(model_file=LLAMA_SPM).vocab_size()


def _preprocess(corpus, spm, out, processor, seq_length, *extra):
    subprocess.run([sys.executable, os.path.join(ROOT, "preprocess.py"), "--corpus_path", corpus,
                    "--spm_model_path", spm, "--dataset_path", out, "--data_processor", processor,
                    "--seq_length", str(seq_length), *extra], check=True, capture_output=True, cwd=ROOT)
    return out


@functools.lru_cache(maxsize=None)
def _dataset(name):
    root = os.path.join(_SESSION_DIR, "datasets")
    if name == "chinese_lm":  # the Chinese tokenizer and corpus exist in ../shared only
        need_shared_data()
        corpus = os.path.join(root, "clue_head.txt")
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(SHARED_DATA, "CLUECorpusSmall_sampled.txt"), encoding="utf-8") as f:
            head = [next(f) for _ in range(40)]
        with open(corpus, "w", encoding="utf-8") as f:
            f.writelines(head)
        return _preprocess(corpus, CHINESE_SPM, os.path.join(root, name), "lm", 64)
    out = os.path.join(root, name)
    if name == "lm":
        return _preprocess(LM_CORPUS, LLAMA_SPM, out, "lm", 64)
    if name == "alpaca":
        return _preprocess(INSTRUCTIONS, LLAMA_SPM, out, "alpaca", 128)
    if name == "alpaca_packed":
        return _preprocess(INSTRUCTIONS, LLAMA_SPM, out, "alpaca", 512, "--packing")
    raise KeyError(name)


class _Datasets(dict):
    """{"lm", "alpaca", "alpaca_packed", "chinese_lm"} dataset folders, each made on first use
    (LLaMA tokenizer unless named; "chinese_lm" skips the test without ../shared)."""

    def __missing__(self, name):
        return _dataset(name)


def datasets():
    return _Datasets()


def pretrain_argv(output, dataset="lm", steps=6, save=3, batch=4, extra=()):
    """A small run of the tiny config; the LLaMA tokenizer; report every step."""
    argv = ["--dataset_path", datasets()[dataset], "--spm_model_path", LLAMA_SPM,
            "--config_path", TINY, "--output_model_path", output, "--total_steps", str(steps),
            "--save_checkpoint_steps", str(save), "--report_steps", "1", "--batch_size",
            str(batch), "--learning_rate", "1e-3", "--warmup", "0",
            "--data_processor", "alpaca" if dataset.startswith("alpaca") else "lm"]
    return argv + list(extra)


def run_in_process(argv):
    """train() in this process (the one-process backend); returns nothing, raises errors."""
    from tencentpretrain.training import build_parser, train
    train(build_parser().parse_args(argv))


def train_t5(data, spm_model, output, processor, steps, batch, learning_rate, capsys,
             report=1, extra=()):
    """pretrain.py on the tiny T5 in this process (--seed 1); returns what it printed."""
    capsys.readouterr()
    run_in_process(["--dataset_path", data, "--spm_model_path", spm_model, "--config_path",
                    T5_TINY, "--output_model_path", output, "--total_steps", str(steps),
                    "--report_steps", str(report), "--batch_size", str(batch),
                    "--learning_rate", str(learning_rate), "--data_processor", processor,
                    "--seed", "1", *extra])
    return capsys.readouterr().out


def run_script(argv, launcher=None, timeout=600):
    """pretrain.py as a subprocess (under ``launcher``, e.g. ["deepspeed", "--num_gpus", "2"])."""
    launcher = list(launcher or [sys.executable])
    if launcher[0] == "deepspeed":  # a free rendezvous port: suites may run side by side
        launcher[1:1] = ["--master_port", str(free_port())]
    cmd = launcher + [os.path.join(ROOT, "pretrain.py")] + list(argv)
    # the interpreter's bin first, as in an activated venv: DeepSpeed's JIT-built CPU ops then
    # always meet the ninja installed with torch, not sometimes the system's (two ninja
    # versions read each other's build log as changed and rebuild, ~20 s each time)
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    env = dict(os.environ, PYTHONPATH=ROOT, PATH=path)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def logged_losses(text):
    """{step: loss} from pretrain.py's training report lines (not `eval | step N | loss`)."""
    return {int(s): float(l) for s, l in
            re.findall(r"(?<!eval \| )step\s+(\d+)(?:/\d+)? \| loss ([0-9.]+)", text)}


def run_main(main, argv, capsys):
    """(exit status, stdout, stderr) of an entry point's ``main(argv)`` in this process, through
    the scripts' one error path (``utils.cli.run``): what the script prints and exits with,
    without a new interpreter's seconds of imports."""
    from tencentpretrain.utils.cli import run
    capsys.readouterr()  # not what the test printed before
    try:
        run(lambda: main([str(a) for a in argv]))
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def run_tool(path, argv, capsys):
    """``run_main`` of the script at ``path`` from the checkout root, e.g. "scripts/x.py"."""
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    return run_main(module.main, argv, capsys)


def generate_seq2seq(model, config, spm_model, sources, prediction, max_new_tokens, capsys):
    """inference/generate_seq2seq.py on the lines ``sources`` (in this process); returns the
    predicted lines."""
    from inference.generate_seq2seq import main
    test = os.path.join(os.path.dirname(str(prediction)), "sources.txt")
    with open(test, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in sources)
    status, _, err = run_main(main, ["--load_model_path", model, "--config_path", config,
                                     "--spm_model_path", spm_model, "--test_path", test,
                                     "--prediction_path", prediction, "--max_new_tokens",
                                     max_new_tokens], capsys)
    assert status == 0, err[-2000:]
    with open(prediction, encoding="utf-8") as f:
        return f.read().splitlines()


def copy_save(full, resumed, step):
    """A run "killed" after its step-``step`` save: ``resumed``'s checkpoint folder gets only
    that save of ``full`` and its latest; returns the folder for --resume_from_checkpoint."""
    from tencentpretrain.training.checkpointing import write_latest
    folder = resumed + ".checkpoints"
    os.makedirs(folder)
    shutil.copytree(f"{full}.checkpoints/global_step{step}", f"{folder}/global_step{step}")
    write_latest(folder, f"global_step{step}")
    return folder


def loss_and_grads(model, batches):
    """Summed loss (float64), counted tokens and every parameter's gradient over ``batches``."""
    model.zero_grad()
    total, count = 0.0, 0
    for batch in batches:
        loss_sum, counted = model(**batch)
        loss_sum.backward()
        total, count = total + loss_sum.detach().double(), count + int(counted)
    return total, count, {name: p.grad.clone() for name, p in model.named_parameters()}
