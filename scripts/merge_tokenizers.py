"""Append a domain SentencePiece model's pieces to a base model (e.g. LLaMA's): base ids and
scores unchanged, English tokenized as before. Rule: tencentpretrain/vocab/merge.py."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.utils.cli import run  # noqa: E402
from tencentpretrain.vocab.merge import (merge_tokenizers, read_texts,  # noqa: E402
                                         tokenization_stats)
from tencentpretrain.vocab.scripts import format_counts, parse_scripts  # noqa: E402
from tencentpretrain.vocab.spm_model import load_processor  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--base_spm_model_path", required=True, help="Base model, e.g. LLaMA's.")
    parser.add_argument("--new_spm_model_path", required=True,
                        help="Domain model (scripts/train_tokenizer.py).")
    parser.add_argument("--output_spm_model_path", required=True, help="Merged model to write.")
    parser.add_argument("--scripts", default=None,
                        help="Append only pieces written in these Unicode scripts, e.g. "
                             "Han,Hiragana,Katakana (names or ISO 15924 codes; by Script_Extensions, "
                             "so ー and 、。 count as Japanese / Chinese; digits, full-width "
                             "punctuation and emoji are Common and count only if Common is "
                             "named). None: every piece the rule admits.")
    parser.add_argument("--eval_corpus_path", nargs="+", default=[],
                        help="Text (.txt lines or .jsonl {\"text\"}) to report tokens per "
                             "character and per byte on, before and after.")
    args = parser.parse_args(argv)
    run(lambda: merge(args))


def merge(args):
    scripts = parse_scripts(args.scripts) if args.scripts is not None else None
    result = merge_tokenizers(args.base_spm_model_path, args.new_spm_model_path,
                              args.output_spm_model_path, scripts)
    base = load_processor(args.base_spm_model_path, "--base_spm_model_path")
    merged = load_processor(args.output_spm_model_path, "--output_spm_model_path")
    print(f"wrote {args.output_spm_model_path}: {base.GetPieceSize()} base pieces + "
          f"{result.added} appended = {merged.GetPieceSize()}")
    if scripts:
        dropped = sum(result.dropped.values())
        print(f"--scripts {','.join(scripts)}: appended {format_counts(result.by_script) or 'none'}"
              f"; dropped {dropped}" + (f" ({format_counts(result.dropped)})" if dropped else ""))
    if result.note:
        print(result.note)
    for path in args.eval_corpus_path:
        texts = list(read_texts(path))
        before, after = tokenization_stats(base, texts), tokenization_stats(merged, texts)
        change = 100.0 * (after["tokens"] - before["tokens"]) / max(before["tokens"], 1)
        print(f"{path}: {before['chars']} chars, {before['bytes']} bytes | tokens "
              f"{before['tokens']} -> {after['tokens']} ({change:+.2f}%) | tokens/char "
              f"{before['tokens'] / before['chars']:.3f} -> {after['tokens'] / after['chars']:.3f}"
              f" | tokens/byte {before['tokens'] / before['bytes']:.3f} -> "
              f"{after['tokens'] / after['bytes']:.3f}")


if __name__ == "__main__":
    main()
