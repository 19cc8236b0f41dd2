"""Questions per second of 5-shot multiple-choice scoring (inference/evaluate_benchmark.py):
the few-shot prefix computed once per subject (KV cache) against one full forward per question
(what LLaMA-Factory's and C-Eval's evaluation code do), same batches, same predictions.

    python3 scripts/benchmark_mc_eval.py --threads 1     # tiny config, reference shape, hidden 1024
    python3 scripts/benchmark_mc_eval.py --shapes 4x256x4 --n_shot 0 --questions 32
    python3 scripts/benchmark_mc_eval.py --shapes models/llama/tinyllama_1.1b_config.json \
        --device cuda --dtype bfloat16 --questions 256 --batch_size 16

The data is MMLU-shaped (English questions of 25-60 words cut from ../shared/data/wiki_demo.txt,
options of 3-10 words; with the LLaMA tokenizer a 5-shot prefix of about 700 tokens, then about
130 for the question) in a temporary folder; the model is random (speed does not depend on the
weights).
"""
import argparse
import csv
import os
import random
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import tencentpretrain  # noqa: E402
from scripts.benchmark_train import model_config  # noqa: E402
from tencentpretrain.benchmarks.evaluate import evaluate_benchmark  # noqa: E402
from tencentpretrain.model_builder import pick_device_dtype  # noqa: E402
from tencentpretrain.tokenizer import SpmTokenizer  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")


def write_mmlu(folder, text_path, questions, shots, seed=0):
    """An MMLU folder with one subject: dev/ (the shots) and test/ (the questions)."""
    with open(text_path, encoding="utf-8") as f:
        words = f.read().split()
    rng = random.Random(seed)

    def phrase(low, high):
        start = rng.randrange(len(words) - high)
        return " ".join(words[start:start + rng.randint(low, high)])

    for split, count in (("dev", shots), ("test", questions)):
        os.makedirs(os.path.join(folder, split), exist_ok=True)
        with open(os.path.join(folder, split, f"world_knowledge_{split}.csv"), "w",
                  encoding="utf-8", newline="") as f:
            csv.writer(f).writerows(
                [phrase(25, 60) + "?", *(phrase(3, 10) for _ in range(4)), rng.choice("ABCD")]
                for _ in range(count))


def _prompt_lengths(tokenizer, folder, n_shot):
    """Mean tokens of the shared prefix and of a question, as scored."""
    from tencentpretrain.benchmarks.formats import LAYOUTS, read_questions
    from tencentpretrain.benchmarks.prompts import build_prompts
    layout = LAYOUTS["mmlu"]
    subject = layout.subject("world_knowledge", {})
    questions = read_questions(layout, layout.path(folder, "test", subject.key))
    shots = read_questions(layout, layout.path(folder, "dev", subject.key))[:n_shot]
    prompts = build_prompts("mmlu", subject, questions, shots, tokenizer, 1 << 30)
    prefix = len(prompts[0].encoded.prefix_ids)
    whole = sum(len(p.encoded.prompt_ids) for p in prompts) / len(prompts)
    return f"prefix {prefix} + question {whole - prefix:.0f} tokens"


def timed(model, tokenizer, data_dir, n_shot, batch_size, use_cache):
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    summary, _ = evaluate_benchmark(model, tokenizer, "mmlu", data_dir, "test", n_shot,
                                    batch_size=batch_size, use_cache=use_cache)
    if next(model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, summary["questions"]["world_knowledge"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="models/llama/tiny_config.json,4x256x4,4x1024x16",
                        help="Comma-separated model configs or LAYERSxHIDDENxHEADS (LLaMA's "
                             "feed-forward rule); 4x256x4 is benchmark_train.py's reference "
                             "shape.")
    parser.add_argument("--spm_model_path", default=os.path.join(SHARED, "llama_tokenizer.model"))
    parser.add_argument("--text_path", default=os.path.join(SHARED, "wiki_demo.txt"))
    parser.add_argument("--n_shot", type=int, default=5)
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3,
                        help="Timed runs of each way, alternating; the median is printed.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto",
                        choices=["auto", "float32", "bfloat16", "float16"])
    args = parser.parse_args(argv)
    device, dtype = pick_device_dtype(args.device, args.dtype)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = SpmTokenizer(args.spm_model_path)
    with tempfile.TemporaryDirectory(prefix="benchmark_mc_eval-") as tmp:
        write_mmlu(tmp, args.text_path, args.questions, args.n_shot)
        prompt = _prompt_lengths(tokenizer, tmp, args.n_shot)
        print(f"{args.questions} MMLU-shaped questions ({prompt}), {args.n_shot} shots, batch "
              f"{args.batch_size}, device {device}, {str(dtype).removeprefix('torch.')}, "
              f"threads {torch.get_num_threads()}")
        print(f"{'model':<24} {'prefix cache':>14} {'full forward':>14} {'speed-up':>9}  "
              f"max |dlogp|  same predictions")
        for name in args.shapes.split(","):
            if name.endswith(".json"):
                config = tencentpretrain.load_config(name)
            else:
                layers, hidden, heads = (int(x) for x in name.split("x"))
                config = model_config(argparse.Namespace(
                    config_path=None, layers_num=layers, hidden_size=hidden, heads_num=heads,
                    feedforward_size=None, seq_length=2048))
            torch.manual_seed(0)
            model = tencentpretrain.build_model(config, tokenizer.vocab_size, device=device)
            model = model.to(dtype).eval()
            timed(model, tokenizer, tmp, args.n_shot, args.batch_size, True)  # warm-up
            runs = {True: [], False: []}
            for _ in range(args.rounds):
                for use_cache in (True, False):
                    runs[use_cache].append(timed(model, tokenizer, tmp, args.n_shot,
                                                 args.batch_size, use_cache))
            (fast, cached), (slow, full) = (
                sorted(runs[c], key=lambda run: run[0])[args.rounds // 2] for c in (True, False))
            same = [a["prediction"] for a in cached] == [b["prediction"] for b in full]
            diff = max(abs(x - y) for a, b in zip(cached, full)
                       for x, y in zip(a["log_probs"], b["log_probs"]))
            print(f"{os.path.basename(name):<24} {len(cached) / fast:>10.1f} q/s "
                  f"{len(full) / slow:>10.1f} q/s {slow / fast:>8.2f}x  {diff:.1e}     {same}")


if __name__ == "__main__":
    main()
