"""Train a SentencePiece model with the settings for merging into LLaMA's (byte fallback,
identity normalization, LLaMA's special layout). Settings: tencentpretrain/vocab/train.py."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.utils.cli import run  # noqa: E402
from tencentpretrain.vocab.train import MODEL_TYPES, train_tokenizer  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--corpus_path", required=True, help="Plain text, one document a line.")
    parser.add_argument("--vocab_size", type=int, required=True, help="Pieces in the model.")
    parser.add_argument("--output_spm_model_path", required=True, help="The .model to write.")
    parser.add_argument("--model_type", choices=MODEL_TYPES, default="bpe",
                        help="bpe matches LLaMA's BPE model: every piece is reachable by merges "
                             "once appended.")
    parser.add_argument("--input_sentence_size", type=int, default=2_000_000,
                        help="Lines sampled from a large corpus (the file is streamed).")
    parser.add_argument("--character_coverage", type=float, default=0.9995,
                        help="Share of characters covered by pieces; the rest are bytes.")
    args = parser.parse_args(argv)
    run(lambda: train_tokenizer(args.corpus_path, args.vocab_size, args.output_spm_model_path,
                                args.model_type, args.input_sentence_size,
                                args.character_coverage))


if __name__ == "__main__":
    main()
