"""Loss and perplexity over all counted tokens of a preprocessed dataset (--dataset_path)
or of a raw text file (--test_path, one document per line, packed like preprocess.py's lm
processor), with training's masking rules (--prefix_lm_loss included)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inference import add_model_options, load_model, run  # noqa: E402
from tencentpretrain.evaluation import evaluate_dataset, evaluate_text  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_options(parser)
    data = parser.add_argument_group("data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset_path", help="Output folder of preprocess.py (lm, alpaca; t5 / seq2seq: "
                             "target-side perplexity).")
    source.add_argument("--test_path", help="Raw UTF-8 text, one document per line.")
    data.add_argument("--seq_length", type=int, default=None,
                      help="--test_path: tokens per sample (default: the config's "
                           "max_seq_length).")
    data.add_argument("--prefix_lm_loss", action="store_true",
                      help="alpaca datasets: count only the answer and its EOS, as training does.")
    data.add_argument("--batch_size", type=int, default=8, help="Samples per forward pass.")
    args = parser.parse_args(argv)
    if args.test_path and args.prefix_lm_loss:
        parser.error("--prefix_lm_loss needs an alpaca --dataset_path, raw text has no prompts")
    if args.batch_size < 1 or (args.seq_length is not None and args.seq_length < 2):
        parser.error("--batch_size must be >= 1 and --seq_length >= 2")
    return args


def say(line):
    """Progress on stderr: stdout keeps only the result line."""
    print(line, file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    say(f"loading {args.load_model_path}")  # minutes for a large model: say what is going on
    model, tokenizer = load_model(args)
    say(f"evaluating {args.dataset_path or args.test_path} on {next(model.parameters()).device}, "
        f"batches of {args.batch_size}")
    if args.dataset_path:
        result = evaluate_dataset(model, tokenizer, args.dataset_path, args.batch_size,
                                  args.prefix_lm_loss, progress=True)
    else:
        result = evaluate_text(model, tokenizer, args.test_path,
                               args.seq_length or model.config.max_seq_length, args.batch_size,
                               progress=True)
    print(f"tokens: {result['tokens']}  loss: {result['loss']:.6f}  "
          f"perplexity: {result['perplexity']:.4f}")


if __name__ == "__main__":
    run(main)
