"""Generate a target for each source line with an encoder-decoder model (T5; TencentPretrain's
script name). The source is encoded as the seq2seq / t5 data processors encode it (its
tokens, then eos); the decoder starts from pad (T5's decoder start token). The encoder runs
once per batch, the decoder with a KV cache (tencentpretrain/generation_seq2seq.py).

Each output line is the target of the source on the same input line ("\\" written as
"\\\\", newlines as "\\n").
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from inference import add_model_options, add_sampling_options, load_model, run  # noqa: E402
from tencentpretrain.generation import GenerationError, SamplingOptions  # noqa: E402
from tencentpretrain.generation_seq2seq import generate_seq2seq  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    io = parser.add_argument_group("input and output")
    io.add_argument("--test_path", required=True, help="Sources, one per line (UTF-8).")
    io.add_argument("--prediction_path", required=True, help="Targets, one per line.")
    length = parser.add_argument_group("length")
    length.add_argument("--seq_length", type=int, default=None,
                        help="Source tokens kept (default: the config's max_seq_length).")
    length.add_argument("--max_new_tokens", type=int, default=64, help="Target length limit.")
    length.add_argument("--batch_size", type=int, default=8,
                        help="Sources generated together (results equal one at a time).")
    add_sampling_options(parser, top_k_default=1, top_k_help="0: off; 1: greedy (default).")
    args = parser.parse_args(argv)
    for name in ("max_new_tokens", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer")
    return args


def escape(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def main(argv=None):
    args = parse_args(argv)
    options = SamplingOptions(args.top_k, args.top_p, args.temperature,
                              args.repetition_penalty).check()
    if not os.path.isfile(args.test_path):
        raise GenerationError(f"--test_path {args.test_path}: no such file")
    model, tokenizer = load_model(args)
    if model.decoder is None:
        raise GenerationError(f"{args.config_path} names no decoder; use inference/generate_lm.py")
    seq_length = args.seq_length or model.config.max_seq_length
    with open(args.test_path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f]
    sources = [tokenizer.encode(line)[:seq_length - 1] + [tokenizer.eos_id] for line in lines]
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(args.seed)
    outputs = []
    for start in range(0, len(sources), args.batch_size):
        outputs += generate_seq2seq(model, sources[start:start + args.batch_size],
                                    args.max_new_tokens, eos_id=tokenizer.eos_id,
                                    pad_id=tokenizer.pad_id, options=options,
                                    generator=generator, vocab_size=tokenizer.vocab_size)
    os.makedirs(os.path.dirname(os.path.abspath(args.prediction_path)), exist_ok=True)
    with open(args.prediction_path, "w", encoding="utf-8") as f:
        for ids in outputs:
            f.write(escape(tokenizer.decode(ids)) + "\n")
    print(f"wrote {len(outputs)} targets to {args.prediction_path}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
