"""Training throughput (tokens/s) and peak RSS for a model shape, batch and sequence length,
through the same backends and train_step as pretrain.py, on random tokens.

    python3 scripts/benchmark_train.py --layers_num 4 --hidden_size 256 --heads_num 4 \
        --vocab_size 32000 --batch_size 8 --seq_length 512 [--use_lora]
    deepspeed --num_gpus 2 scripts/benchmark_train.py --deepspeed \
        --deepspeed_config models/deepspeed_zero3_config.json --enable_zero3 ...
    # encoder-decoder (T5): sources of --seq_length, targets of --tgt_seq_length
    python3 scripts/benchmark_train.py --config_path models/t5-v1_1/small_config.json \
        --vocab_size 32128 --batch_size 8 --seq_length 512 --tgt_seq_length 114

tokens/s counts source (encoder input) tokens, as pretrain.py reports them.
"""
import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.config import config_from_dict, load_config  # noqa: E402
from tencentpretrain.errors import UserError  # noqa: E402
from tencentpretrain.layers.lora import LoraConfig  # noqa: E402
from tencentpretrain.training.engine import make_backend  # noqa: E402
from tencentpretrain.training.metrics import flops_per_token, peak_flops  # noqa: E402
from tencentpretrain.training.options import _add_deepspeed_arguments  # noqa: E402
from tencentpretrain.training.settings import Launch, read_config, resolve  # noqa: E402
from tencentpretrain.training.trainer import setup_model, train_step  # noqa: E402


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    shape = parser.add_argument_group("model shape (or --config_path)")
    shape.add_argument("--config_path", default=None)
    shape.add_argument("--layers_num", type=int, default=4)
    shape.add_argument("--hidden_size", type=int, default=256)
    shape.add_argument("--heads_num", type=int, default=4)
    shape.add_argument("--feedforward_size", type=int, default=None,
                       help="Default: LLaMA's rule, 8/3 x hidden rounded up to a multiple of 256.")
    shape.add_argument("--vocab_size", type=int, default=32000)
    run = parser.add_argument_group("run")
    run.add_argument("--batch_size", type=int, default=8, help="Per rank.")
    run.add_argument("--seq_length", type=int, default=512)
    run.add_argument("--tgt_seq_length", type=int, default=None,
                     help="Encoder-decoder configs: target tokens per sample (default: "
                          "seq_length // 4; T5 span corruption of 512 gives 114).")
    run.add_argument("--steps", type=int, default=10, help="Timed steps.")
    run.add_argument("--warmup_steps", type=int, default=2, help="Untimed steps first.")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    run.add_argument("--bf16", action="store_true",
                     help="One process: bf16 autocast (what a DeepSpeed config with bf16 gives).")
    run.add_argument("--deepspeed_checkpoint_activations", action="store_true")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile each transformer layer (as pretrain.py --compile).")
    run.add_argument("--chunk_logits", type=int, default=None,
                     help="Logits per chunk of the LM loss (default: linear_cross_entropy's "
                          "CHUNK_LOGITS); for timing other chunk sizes.")
    run.add_argument("--enable_zero3", action="store_true")
    run.add_argument("--use_lora", action="store_true",
                     help="Train LoRA adapters (all seven targets) on a frozen base instead.")
    run.add_argument("--lora_r", type=int, default=LoraConfig.r)
    run.add_argument("--local_rank", type=int, default=-1)
    _add_deepspeed_arguments(parser)
    return parser


def model_config(args):
    if args.config_path:
        return load_config(args.config_path)
    return config_from_dict({
        "emb_size": args.hidden_size, "hidden_size": args.hidden_size,
        "feedforward_size": args.feedforward_size or -(-(8 * args.hidden_size // 3) // 256) * 256,
        "heads_num": args.heads_num, "layers_num": args.layers_num,
        "max_seq_length": args.seq_length}, source="benchmark shape")


def random_seq2seq_batch(args, generator):
    """A t5 / seq2seq batch (data/seq2seq.py collate_seq2seq's keys): full sources and
    targets, the decoder input the target shifted right behind pad (0)."""
    tgt_length = args.tgt_seq_length or max(args.seq_length // 4, 1)
    source = torch.randint(4, args.vocab_size, (args.batch_size, args.seq_length),
                           generator=generator)
    target = torch.randint(4, args.vocab_size, (args.batch_size, tgt_length), generator=generator)
    tgt_ids = torch.cat([torch.zeros(args.batch_size, 1, dtype=torch.long), target[:, :-1]], 1)
    return {"input_ids": source, "seg": torch.ones_like(source), "tgt_ids": tgt_ids,
            "labels": target, "loss_mask": torch.ones_like(target, dtype=torch.bool)}


def random_batch(args, generator):
    tokens = torch.randint(4, args.vocab_size, (args.batch_size, args.seq_length + 1),
                           generator=generator)
    return {"input_ids": tokens[:, :-1], "labels": tokens[:, 1:],
            "loss_mask": torch.ones(args.batch_size, args.seq_length, dtype=torch.bool),
            "seg": torch.ones(args.batch_size, args.seq_length, dtype=torch.long)}


def main():
    args = build_parser().parse_args()
    if args.chunk_logits:
        from tencentpretrain.targets import linear_cross_entropy
        linear_cross_entropy.CHUNK_LOGITS = args.chunk_logits
    if args.threads:
        torch.set_num_threads(args.threads)
    args.accumulation_steps, args.learning_rate = 1, 1e-4
    launch = Launch.from_environment(args.local_rank)
    say = print if launch.rank == 0 else (lambda line: None)
    try:
        raw_config = read_config(args.deepspeed_config)
        if args.bf16:
            raw_config["bf16"] = {"enabled": True}
        backend = make_backend(resolve(args, say, ds_config=raw_config, launch=launch))
        model = setup_model(backend, model_config(args), args.vocab_size, seed=7, weights=None,
                            checkpoint_layers=1 if args.deepspeed_checkpoint_activations else 0,
                            multiplier=lambda step: 1.0, compile_layers=args.compile,
                            lora=LoraConfig(r=args.lora_r).check() if args.use_lora else None)
    except UserError as e:
        sys.exit(f"error: {e}")
    generator = torch.Generator().manual_seed(backend.rank)
    make = random_seq2seq_batch if model.config.decoder else random_batch
    batches = [make(args, generator) for _ in range(4)]
    for step in range(args.warmup_steps):
        train_step(backend, [batches[step % 4]])
    start = time.perf_counter()
    tokens = 0
    for step in range(args.steps):
        tokens += train_step(backend, [batches[step % 4]])[2]
    elapsed = time.perf_counter() - start
    peak_rss = backend.all_reduce_sum(torch.tensor(
        [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss], dtype=torch.float64)).item()
    tokens_per_s = tokens / elapsed
    mode = (f"deepspeed {'ZeRO-3 ' if backend.zero3 else ''}{backend.world_size} rank(s)"
            if args.deepspeed else "one process")
    training = f"LoRA r {args.lora_r}" if args.use_lora else "full"
    mode += "".join([", activation checkpointing" * args.deepspeed_checkpoint_activations,
                     ", compiled layers" * args.compile])
    target = ""
    if model.config.decoder:
        target = (f" -> {args.tgt_seq_length or max(args.seq_length // 4, 1)} (decoder layers "
                  f"{model.config.decoder_layers}; source tokens/s)")
    say(f"{mode}, {training}, {backend.precision}, {torch.get_num_threads()} threads | layers "
        f"{model.config.layers_num} hidden {model.config.hidden_size} heads "
        f"{model.config.heads_num} vocab {args.vocab_size} | batch {args.batch_size} x "
        f"{args.seq_length}{target} per rank | {tokens_per_s:,.0f} tokens/s | peak RSS "
        f"{peak_rss / 2 ** 20:.2f} GiB (all ranks)")
    peak = peak_flops() if not model.config.decoder else None  # flops_per_token: decoder-only
    if peak:
        mfu = tokens_per_s * flops_per_token(model, args.seq_length) / (peak * backend.world_size)
        say(f"MFU {100 * mfu:.1f}%")
    if backend.device.type == "cuda":
        say(f"CUDA peak allocated {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} GiB (rank 0)")
    backend.close()


if __name__ == "__main__":
    main()
