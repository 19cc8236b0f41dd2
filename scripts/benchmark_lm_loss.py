"""Peak memory and time of the LM head + loss (forward and backward), chunked against plain.

    python3 scripts/benchmark_lm_loss.py --batch_size 4 --seq_length 4096 --vocab_size 32000

Each variant runs in its own process so that its peak RSS (or CUDA peak allocation) is its
own; "plain" is the formula lm_target.py used before the chunked loss: whole [tokens, vocab]
logits, F.cross_entropy over them in fp32.
"""
import argparse
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = ("plain", "chunked")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seq_length", type=int, default=4096)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--vocab_size", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=3, help="Timed forward+backward passes.")
    parser.add_argument("--variant", choices=VARIANTS, default=None,
                        help="Run only this one, in this process (what the driver calls).")
    return parser


def measure(args):
    import torch
    import torch.nn.functional as F
    sys.path.insert(0, ROOT)
    from tencentpretrain.targets.linear_cross_entropy import linear_cross_entropy

    def plain(hidden, weight, labels, loss_mask):
        token_loss = F.cross_entropy((hidden @ weight.t()).float().flatten(0, 1),
                                     labels.flatten(), reduction="none")
        return torch.where(loss_mask.flatten(), token_loss, 0.0).sum()

    loss_fn = plain if args.variant == "plain" else linear_cross_entropy
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generator = torch.Generator(device).manual_seed(0)
    shape = (args.batch_size, args.seq_length)
    hidden = torch.randn(*shape, args.hidden_size, device=device, generator=generator,
                         requires_grad=True)
    weight = (0.02 * torch.randn(args.vocab_size, args.hidden_size, device=device,
                                 generator=generator)).requires_grad_()
    labels = torch.randint(0, args.vocab_size, shape, device=device, generator=generator)
    loss_mask = torch.ones(shape, dtype=torch.bool, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        loss_fn(hidden, weight, labels, loss_mask).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = f"CUDA peak allocated {torch.cuda.max_memory_allocated() / 2 ** 20:,.0f} MiB"
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = f"peak RSS {rss / 2 ** 10:,.0f} MiB ({(rss - before) / 2 ** 10:,.0f} MiB above inputs)"
    print(f"{args.variant:<8} | {args.batch_size} x {args.seq_length} tokens, hidden "
          f"{args.hidden_size}, vocab {args.vocab_size}, {device.type} | {peak} | "
          f"{min(times):.2f} s per forward+backward", flush=True)


def main():
    args = build_parser().parse_args()
    if args.variant:
        measure(args)
        return
    for variant in VARIANTS:
        argv = [a for a in sys.argv[1:]] + ["--variant", variant]
        subprocess.run([sys.executable, os.path.abspath(__file__)] + argv, check=True)


if __name__ == "__main__":
    main()
