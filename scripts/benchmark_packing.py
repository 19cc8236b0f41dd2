"""Packed vs padded instruction tuning: samples per epoch and answer tokens trained per second.

    flock /tmp/heavy.lock python3 scripts/benchmark_packing.py --seq_length 1024

Preprocesses the corpus twice with the real preprocess() (one example per sample, and
--packing), then times train_step (pretrain.py's step, one process) on the same model shape
for: packed samples (isolated: per-example attention + positions, by the model's default path
for the device), the same with a dense boolean [seq, seq] mask instead, the same packed
batches without isolation (not a valid training mode: it prices isolation), and unpacked
samples padded to the longest in the batch (this project's collate) and to seq_length
(TencentPretrain's fixed shapes); one step of each mode in turn. Batches come from BatchIterator with --prefix_lm_loss, so
"answer tokens" are exactly the tokens the loss counts.
"""
import argparse
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")

from tencentpretrain.config import config_from_dict  # noqa: E402
from tencentpretrain.data import BatchIterator, TokenDataset, preprocess  # noqa: E402
from tencentpretrain.training.engine import make_backend  # noqa: E402
from tencentpretrain.training.settings import Launch, resolve  # noqa: E402
from tencentpretrain.training.options import _add_deepspeed_arguments  # noqa: E402
from tencentpretrain.training.trainer import setup_model, train_step  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus_path", default=os.path.join(SHARED, "alpaca_zh_demo.json"))
    parser.add_argument("--spm_model_path", default=os.path.join(SHARED, "llama_tokenizer.model"))
    parser.add_argument("--seq_length", type=int, default=1024)
    parser.add_argument("--layers_num", type=int, default=4)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--heads_num", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=4, help="Samples per step, every mode.")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per mode.")
    parser.add_argument("--warmup_steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--modes", default="packed,packed_dense_mask,packed_unisolated,padded_longest,"
                                           "padded_seq_length")
    _add_deepspeed_arguments(parser)
    return parser


def make_model(args, vocab_size):
    config = config_from_dict({
        "emb_size": args.hidden_size, "hidden_size": args.hidden_size,
        "feedforward_size": -(-(8 * args.hidden_size // 3) // 256) * 256,
        "heads_num": args.heads_num, "layers_num": args.layers_num,
        "max_seq_length": args.seq_length}, source="benchmark shape")
    args.accumulation_steps, args.learning_rate, args.enable_zero3 = 1, 1e-4, False
    backend = make_backend(resolve(args, launch=Launch()))
    return backend, setup_model(backend, config, vocab_size, seed=7, weights=None,
                                checkpoint_layers=0, multiplier=lambda step: 1.0)


def time_modes(backend, encoder, iterators, args):
    """Round-robin, one step of each mode in turn, so load from other processes on a shared
    machine falls on every mode alike. ``iterators``: mode -> (batches, isolation kind)."""
    totals = {mode: dict(answer=0, tokens=0, examples=0, seconds=0.0) for mode in iterators}
    for step in range(args.warmup_steps + args.steps):
        for mode, (batches, isolation) in iterators.items():
            batch = next(batches)
            encoder.isolation = isolation
            start = time.perf_counter()
            tokens = train_step(backend, [batch])[2]
            seconds = time.perf_counter() - start
            if step >= args.warmup_steps:
                t = totals[mode]
                t["answer"] += int(batch["loss_mask"].sum())
                t["examples"] += int(batch["seg"].amax(dim=1).sum())
                t["tokens"] += tokens
                t["seconds"] += seconds
                t["shape"] = tuple(batch["input_ids"].shape)
    return {mode: {"answer_per_s": t["answer"] / t["seconds"], "tokens_per_s": t["tokens"] / t["seconds"],
                   "examples_per_s": t["examples"] / t["seconds"], "shape": t["shape"]}
            for mode, t in totals.items()}


def main():
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="benchmark_packing-") as tmp:
        summaries = {}
        for name, packing in (("padded", False), ("packed", True)):
            summaries[name] = preprocess(args.corpus_path, args.spm_model_path, os.path.join(tmp, name),
                                         data_processor="alpaca", seq_length=args.seq_length,
                                         packing=packing, progress=False)
            s = summaries[name]
            print(f"{name:<7} {s['documents']:,} examples -> {s['samples']:,} samples of <= "
                  f"{args.seq_length + 1} tokens, fill {s['fill']:.1%}")
        datasets = {name: TokenDataset(os.path.join(tmp, name)) for name in summaries}
        backend, model = make_model(args, datasets["packed"].vocab_size)
        print(f"model: {args.layers_num} layers, hidden {args.hidden_size}, heads {args.heads_num}, "
              f"vocab {datasets['packed'].vocab_size}; one process, {backend.precision}, "
              f"{torch.get_num_threads()} threads; batch {args.batch_size}, --prefix_lm_loss")

        def batches(name, pad_to=None, isolate=True):
            iterator = BatchIterator(datasets[name], args.batch_size, seed=7, prefix_lm_loss=True,
                                     pad_to=pad_to)
            for batch in iterator:
                if not isolate:
                    batch = {k: v for k, v in batch.items() if k not in ("isolate_segments", "position_ids")}
                yield batch

        modes = {"packed": lambda: (batches("packed"), None),
                 "packed_dense_mask": lambda: (batches("packed"), "dense"),
                 "packed_unisolated": lambda: (batches("packed", isolate=False), None),
                 "padded_longest": lambda: (batches("padded"), None),
                 "padded_seq_length": lambda: (batches("padded", pad_to=args.seq_length), None)}
        results = time_modes(backend, model.encoder, {mode: modes[mode]() for mode in args.modes.split(",")},
                             args)
        for mode, r in results.items():
            print(f"{mode:<18} batch {r['shape'][0]} x {r['shape'][1]:<5} {r['answer_per_s']:8,.0f} "
                  f"answer tokens/s  {r['tokens_per_s']:8,.0f} tokens/s  {r['examples_per_s']:6.2f} "
                  f"examples/s")
        if "packed" in results:
            for mode in ("padded_longest", "padded_seq_length"):
                if mode in results:
                    print(f"packed vs {mode}: {results['packed']['answer_per_s'] / results[mode]['answer_per_s']:.2f}x "
                          f"answer tokens/s")


if __name__ == "__main__":
    main()
