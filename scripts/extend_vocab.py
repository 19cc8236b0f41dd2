"""Resize a checkpoint to a new tokenizer (e.g. from scripts/merge_tokenizers.py): embedding
and output rows carried over by piece string, new rows initialised. See
tencentpretrain/vocab/extend.py."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.utils.cli import run  # noqa: E402
from tencentpretrain.vocab.extend import INITS, extend_vocab  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input_model_path", required=True, help=".bin or .safetensors weights.")
    parser.add_argument("--config_path", required=True, help="Model config JSON.")
    parser.add_argument("--base_spm_model_path", required=True,
                        help="The tokenizer the input checkpoint was trained with.")
    parser.add_argument("--spm_model_path", required=True, help="The new (merged) tokenizer.")
    parser.add_argument("--output_model_path", required=True,
                        help="Weights to write (.bin or .safetensors by extension).")
    parser.add_argument("--init", choices=INITS, default="subword_mean",
                        help="New rows: mean of the base pieces spelling the piece, or of all "
                             "base rows.")
    parser.add_argument("--pad_to_multiple_of", type=int, default=None,
                        help="Round the rows up to a multiple of this (e.g. 64).")
    args = parser.parse_args(argv)
    run(lambda: extend_vocab(args.input_model_path, args.config_path, args.base_spm_model_path,
                             args.spm_model_path, args.output_model_path, args.init,
                             args.pad_to_multiple_of))


if __name__ == "__main__":
    main()
