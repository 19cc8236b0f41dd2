"""Resize a checkpoint to a new tokenizer (e.g. from scripts/merge_tokenizers.py): embedding
and output rows carried over by piece string, new rows initialised. See
tencentpretrain/vocab/extend.py. --add_special_tokens appends special tokens (a chat template's)
to the tokenizer first (tencentpretrain/vocab/special_tokens.py)."""
import argparse
import os
import tempfile
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.utils.cli import run  # noqa: E402
from tencentpretrain.vocab.extend import INITS, extend_vocab  # noqa: E402
from tencentpretrain.vocab.special_tokens import add_special_tokens, parse_tokens  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input_model_path", required=True, help=".bin or .safetensors weights.")
    parser.add_argument("--config_path", required=True, help="Model config JSON.")
    parser.add_argument("--base_spm_model_path", required=True,
                        help="The tokenizer the input checkpoint was trained with.")
    parser.add_argument("--spm_model_path", default=None,
                        help="The new (merged) tokenizer (required unless --add_special_tokens).")
    parser.add_argument("--add_special_tokens", default=None,
                        help='Comma-separated tokens (e.g. "<|im_start|>,<|im_end|>" for '
                             "--chat_template chatml) appended as user-defined pieces to "
                             "--spm_model_path (or the base) and written to "
                             "--output_spm_model_path; their rows start as the mean of all "
                             "base rows.")
    parser.add_argument("--add_sentinel_tokens", type=int, default=None, metavar="N",
                        help="T5 span corruption (preprocess.py --data_processor t5): append "
                             "<extra_id_{N-1}> .. <extra_id_0> as special tokens, so that, as in "
                             "T5's vocabulary, <extra_id_0> is the last id and the ids count down.")
    parser.add_argument("--output_spm_model_path", default=None,
                        help="Where --add_special_tokens writes the tokenizer to train with.")
    parser.add_argument("--output_model_path", required=True,
                        help="Weights to write (.bin or .safetensors by extension).")
    parser.add_argument("--init", choices=INITS, default="subword_mean",
                        help="New rows: mean of the base pieces spelling the piece, or of all "
                             "base rows.")
    parser.add_argument("--pad_to_multiple_of", type=int, default=None,
                        help="Round the rows up to a multiple of this (e.g. 64).")
    args = parser.parse_args(argv)
    if args.add_sentinel_tokens:
        sentinels = ",".join(f"<extra_id_{i}>" for i in reversed(range(args.add_sentinel_tokens)))
        args.add_special_tokens = ",".join(filter(None, [args.add_special_tokens, sentinels]))
    if not args.spm_model_path and not args.add_special_tokens:
        parser.error("--spm_model_path or --add_special_tokens is required")
    if bool(args.add_special_tokens) != bool(args.output_spm_model_path):
        parser.error("--add_special_tokens and --output_spm_model_path go together")
    run(lambda: extend(args))


def extend(args):
    if not args.add_special_tokens:
        return extend_vocab(args.input_model_path, args.config_path, args.base_spm_model_path,
                            args.spm_model_path, args.output_model_path, args.init,
                            args.pad_to_multiple_of)
    tokens = parse_tokens(args.add_special_tokens)
    source = args.spm_model_path or args.base_spm_model_path
    added = add_special_tokens(source, tokens, args.output_spm_model_path,
                               "--spm_model_path" if args.spm_model_path else "--base_spm_model_path")
    print(f"wrote {args.output_spm_model_path}: {source} + {len(added)} special token(s) "
          f"{', '.join(added) or '(all there already)'}")
    base, output = args.base_spm_model_path, args.output_model_path
    if args.spm_model_path:  # merged pieces by --init first, then the special rows by mean
        with tempfile.TemporaryDirectory(prefix="extend_vocab_", dir=os.path.dirname(
                os.path.abspath(output))) as tmp:
            merged = os.path.join(tmp, "merged" + os.path.splitext(output)[1])
            extend_vocab(args.input_model_path, args.config_path, base, args.spm_model_path,
                         merged, args.init)
            return extend_vocab(merged, args.config_path, args.spm_model_path,
                                args.output_spm_model_path, output, "mean", args.pad_to_multiple_of)
    return extend_vocab(args.input_model_path, args.config_path, base, args.output_spm_model_path,
                        output, "mean", args.pad_to_multiple_of)


if __name__ == "__main__":
    main()
