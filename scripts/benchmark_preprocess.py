"""Benchmark preprocess.py: tokens/s, MB/s and peak RSS, next to the tokenizer's raw speed.

    python3 scripts/benchmark_preprocess.py [--repeat 25] [--processes_num 2]
        [--tokenizer_path tokenizer.json] [--corpus wiki_demo.txt]

The corpus is ../shared/data/CLUECorpusSmall_sampled.txt (or --corpus) repeated --repeat
times (25: about 49 MB) in a temporary directory, tokenized with the LLaMA SentencePiece
tokenizer (or --spm_model_path / --tokenizer_path) by the real CLI in a child process. Peak
RSS of the largest single process comes from getrusage; the memory of the whole process tree
(main + workers) is sampled from /proc as PSS. The temporary corpus and
dataset are deleted.
"""
import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")
sys.path.insert(0, ROOT)

from tencentpretrain.tokenizer import add_tokenizer_options, load_tokenizer  # noqa: E402

TENCENTPRETRAIN_TOKENS_PER_S = 3.4e6  # its preprocess.py on the 49 MB corpus, 2 processes


def make_corpus(path, source, repeat):
    with open(os.path.join(DATA, source), "rb") as f:
        text = f.read()
    with open(path, "wb") as out:
        for _ in range(repeat):
            out.write(text)


def single_core_encode_speed(corpus, tokenizer, max_bytes=50 << 20):
    """tokens/s of the tokenizer's encode_batch(lines, num_threads=1) on the corpus's lines
    (SentencePieceProcessor.encode / tokenizers' encode_batch_fast, one core)."""
    tokens, seconds, done = 0, 0.0, 0
    with open(corpus, encoding="utf-8") as f:
        while done < max_bytes:
            lines = [line.strip() for line in f.readlines(1 << 20)]
            if not lines:
                break
            done += sum(map(len, lines))
            start = time.perf_counter()
            ids = tokenizer.encode_batch(lines, num_threads=1)
            seconds += time.perf_counter() - start
            tokens += sum(map(len, ids))
    return tokens / seconds


def tree_memory(pid):
    """Proportional set size (PSS: shared pages split between their users, so pages forked
    workers share with the main process count once) of a process and its descendants."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def run_cli(args):
    """Run preprocess.py; returns (wall seconds, peak PSS of the process tree, stdout)."""
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, "preprocess.py"), *args,
                                "--no_progress"], stdout=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], tree_memory(process.pid))
            time.sleep(0.02)

    start = time.perf_counter()
    sampler = threading.Thread(target=sample)
    sampler.start()
    out, _ = process.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if process.returncode:
        sys.exit(f"preprocess.py failed with exit code {process.returncode}")
    return wall, peak[0], out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=25, help="copies of the CLUE sample")
    parser.add_argument("--processes_num", type=int, default=os.cpu_count())
    add_tokenizer_options(parser, required=False,
                          spm_help="SentencePiece model (default: ../shared/data/llama_tokenizer.model).")
    parser.add_argument("--corpus", default="CLUECorpusSmall_sampled.txt",
                        help="A text file of ../shared/data, repeated --repeat times.")
    parser.add_argument("--seq_length", type=int, default=512)
    parser.add_argument("--skip_encode_baseline", action="store_true")
    args = parser.parse_args()
    if not args.tokenizer_path:
        args.spm_model_path = args.spm_model_path or os.path.join(DATA, "llama_tokenizer.model")
    tokenizer = load_tokenizer(args.spm_model_path, args.tokenizer_path)
    tokenizer_option = [tokenizer.option, tokenizer.path]

    work = tempfile.mkdtemp(prefix="benchmark_preprocess.")
    try:
        corpus = os.path.join(work, "corpus.txt")
        make_corpus(corpus, args.corpus, args.repeat)
        megabytes = os.path.getsize(corpus) / 1e6
        dataset = os.path.join(work, "dataset")
        wall, peak_tree, out = run_cli([
            "--corpus_path", corpus, *tokenizer_option,
            "--dataset_path", dataset, "--data_processor", "lm", "--seq_length", str(args.seq_length),
            "--processes_num", str(args.processes_num)])
        peak_process = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        with open(os.path.join(dataset, "meta.json")) as f:
            tokens = json.load(f)["num_tokens"]
        print(out.rstrip())
        print()
        print(f"corpus            {megabytes:.1f} MB ({args.repeat} x {args.corpus}), {tokens:,} "
              f"tokens of {tokenizer.source}, {args.processes_num} processes on "
              f"{os.cpu_count()} cores")
        print(f"preprocess.py     {tokens / wall / 1e6:.2f} M tokens/s, {megabytes / wall:.1f} MB/s "
              f"({wall:.2f} s wall, interpreter start included)")
        print(f"peak RSS          {peak_process / 2**20:.0f} MiB largest single process (getrusage), "
              f"{peak_tree / 2**20:.0f} MiB PSS of all processes together (sampled)")
        if not args.skip_encode_baseline:
            speed = single_core_encode_speed(corpus, tokenizer)
            cores = min(args.processes_num, os.cpu_count())
            print(f"raw encode        {speed / 1e6:.2f} M tokens/s single core "
                  f"(encode_batch, num_threads=1)")
            print(f"vs ideal          {tokens / wall / (cores * speed):.0%} of {cores} cores x single-core "
                  f"encode (target >= 50%)")
        print(f"vs TencentPretrain {tokens / wall / TENCENTPRETRAIN_TOKENS_PER_S:.1f}x its 3.4 M tokens/s "
              f"(target >= 5x)")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
