"""How packed examples are kept apart in attention, priced: tokens/s and peak memory of
training steps on packed instruction samples, per isolation kind.

    flock /tmp/heavy.lock python3 scripts/benchmark_isolation.py --seq_length 4096
    python3 scripts/benchmark_isolation.py --seq_length 4096 --device cuda --bf16   # on a GPU

Kinds (``encoder.isolation``): ``dense`` (a boolean [batch, 1, seq, seq] mask into SDPA),
``spans`` (causal SDPA over each example alone; the default), ``block_mask``
(FlexAttention block mask, compiled; CUDA only: FlexAttention has no CPU backward) and ``none`` (the same batches with no isolation at all: not a valid training mode,
the floor isolation is measured against). The corpus is packed once with the real
preprocess(); each kind then runs in its own process, so its peak memory is its own, for
--rounds rounds in turn (the median is printed).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "data")
KINDS = ("none", "dense", "spans", "block_mask")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus_path", default=os.path.join(SHARED, "alpaca_zh_demo.json"))
    parser.add_argument("--spm_model_path", default=os.path.join(SHARED, "llama_tokenizer.model"))
    parser.add_argument("--seq_length", type=int, default=4096)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--config_path", default=None,
                        help="A model config; default: the reference shape (4 layers, hidden 256).")
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per process.")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA).")
    parser.add_argument("--kinds", default=None,
                        help="Comma-separated; default: all that run on --device.")
    parser.add_argument("--dataset_path", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default=None, choices=KINDS, help=argparse.SUPPRESS)
    return parser


def model_config(args):
    sys.path.insert(0, ROOT)
    from tencentpretrain.config import config_from_dict, load_config
    if args.config_path:
        return load_config(args.config_path)
    return config_from_dict({"emb_size": 256, "hidden_size": 256, "feedforward_size": 688,
                             "heads_num": 4, "layers_num": 4, "max_seq_length": args.seq_length},
                            source="benchmark shape")


def measure(args):
    """One kind, in this process: forward + backward + SGD-free steps; prints one JSON line."""
    import torch
    sys.path.insert(0, ROOT)
    import tencentpretrain
    from tencentpretrain.data import BatchIterator, TokenDataset
    from tencentpretrain.data.batching import batch_to

    device = torch.device(args.device)
    dataset = TokenDataset(args.dataset_path)
    torch.manual_seed(0)
    model = tencentpretrain.build_model(model_config(args), dataset.vocab_size).to(device).train()
    model.encoder.isolation = None if args.kind == "none" else args.kind
    batches = BatchIterator(dataset, args.batch_size, seed=7, prefix_lm_loss=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, tokens, answers = [], 0, 0
    for step in range(1 + args.steps):  # the first step compiles / warms up, untimed
        batch = next(batches)
        if args.kind == "none":
            batch = {k: v for k, v in batch.items() if k not in ("isolate_segments", "position_ids")}
        batch = batch_to(batch, device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss_sum, _ = model(**batch)
        loss_sum.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
            tokens += int((batch["seg"] > 0).sum())
            answers += int(batch["loss_mask"].sum())
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"tokens_per_s": tokens / sum(times), "answer_per_s": answers / sum(times),
                      "peak_mib": peak / 2 ** 20}), flush=True)


def main():
    args = build_parser().parse_args()
    if args.kind:
        measure(args)
        return
    kinds = args.kinds.split(",") if args.kinds else [
        k for k in KINDS if k != "block_mask" or args.device == "cuda"]
    for kind in kinds:
        if kind not in KINDS:
            sys.exit(f"error: --kinds: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        if kind == "block_mask" and args.device != "cuda":
            sys.exit("error: --kinds block_mask needs --device cuda (FlexAttention has no CPU backward)")
    sys.path.insert(0, ROOT)
    from tencentpretrain.data import preprocess
    with tempfile.TemporaryDirectory(prefix="benchmark_isolation-") as tmp:
        summary = preprocess(args.corpus_path, args.spm_model_path, tmp, data_processor="alpaca",
                             seq_length=args.seq_length, packing=True, progress=False)
        print(f"{summary['documents']:,} examples packed into {summary['samples']:,} samples of <= "
              f"{args.seq_length + 1} tokens (fill {summary['fill']:.1%}); batch {args.batch_size}, "
              f"{args.device}{', bf16' if args.bf16 else ', fp32'}, forward + backward, "
              f"{args.steps} timed steps x {args.rounds} rounds, one process per kind and round",
              flush=True)
        results = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                command = [sys.executable, os.path.abspath(__file__), *sys.argv[1:],
                           "--dataset_path", tmp, "--kind", kind]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"error: kind {kind} failed:\n{done.stderr.strip()[-2000:]}")
                results[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))
    memory = "CUDA peak allocated" if args.device == "cuda" else "peak RSS"
    for kind, runs in results.items():
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        print(f"{kind:<11} {median['tokens_per_s']:>9,.0f} tokens/s {median['answer_per_s']:>9,.0f} "
              f"answer tokens/s  {memory} {median['peak_mib']:>8,.0f} MiB")


if __name__ == "__main__":
    main()
