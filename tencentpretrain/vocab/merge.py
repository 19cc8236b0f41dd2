"""Merge a domain SentencePiece model into a base one (e.g. LLaMA's) by appending pieces.

The rule, chosen so that the base's text (English for LLaMA) tokenizes exactly as before:

- every base piece keeps its id, score and type; the merged model keeps the base's trainer
  and normalizer specs, so it is the base model plus pieces;
- a new model's piece is appended (once, in the new model's order) only if it is a normal
  piece, is not already a base piece, contains no ASCII character and is not whitespace
  (``▁``) alone. Text made only of ASCII characters can then never form a new piece;
- scores: with a BPE base, the k-th appended piece (from 0) scores ``s_last - 1 - k``, where
  ``s_last`` is the score of the base's last piece. Appended merges rank after every base
  merge, in id order, so SentencePiece (highest score first) and Hugging Face's converter
  (merges ranked by id) agree. With a unigram base the piece keeps the new model's score
  (a log-probability on the same scale).
- with ``scripts`` (``--scripts Han,Hiragana,Katakana``, see scripts.py) a piece is appended
  only if, besides, every character but ``▁`` is in one of those Unicode scripts; the result
  counts the appended pieces by script and the dropped ones by the script that excluded them.

The merged model normalizes text by the base's rule. When that rule is not identity (e.g.
``nmt_nfkc``), the result carries a note: appended pieces holding characters the rule
rewrites can never be produced, and a Hugging Face tokenizer must apply the same rule to give
the same ids.
"""
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

import sentencepiece as spm

from tencentpretrain.data.corpus import JSONL, corpus_kind
from tencentpretrain.tokenizer import TokenizerError
from tencentpretrain.vocab.scripts import ScriptFilter
from tencentpretrain.vocab.spm_model import MODEL_TYPE_NAMES, NORMAL, load_proto

WHITESPACE = "\u2581"
# What SentencePiece's built-in normalization rules do, for the note on a non-identity base.
RULES = {
    "nfkc": "Unicode NFKC, e.g. full-width \uff0c becomes ',' and \uff21 becomes 'A'",
    "nmt_nfkc": "NFKC plus NMT cleanup, e.g. full-width \uff0c becomes ',', control characters "
                "are dropped, a newline becomes a space",
    "nfkc_cf": "NFKC and case folding, e.g. full-width \uff0c becomes ',', 'A' becomes 'a'",
    "nmt_nfkc_cf": "NFKC, NMT cleanup and case folding, e.g. full-width \uff0c becomes ',', a "
                   "newline becomes a space, 'A' becomes 'a'",
}


@dataclass
class MergeResult:
    added: int  # pieces appended
    by_script: Counter = field(default_factory=Counter)  # with scripts: label -> appended
    dropped: Counter = field(default_factory=Counter)  # with scripts: excluding script -> pieces
    note: Optional[str] = None  # the base normalizes text: what it means for the merged model


def is_appendable(piece, base_pieces):
    text = piece.piece
    return (piece.type == NORMAL and text not in base_pieces and text.strip(WHITESPACE) != ""
            and not any(ord(ch) < 128 for ch in text))


def merge_protos(base, new, scripts=None):
    """(merged ModelProto, MergeResult); ``base`` and ``new`` are untouched. ``scripts``: Unicode
    script names (validated, scripts.parse_scripts) an appended piece must be written in."""
    merged = type(base)()
    merged.CopyFrom(base)
    base_pieces = {p.piece for p in base.pieces}
    bpe = MODEL_TYPE_NAMES.get(base.trainer_spec.model_type) == "bpe"
    last_score = base.pieces[-1].score
    script_filter = ScriptFilter(scripts) if scripts else None
    result = MergeResult(0)
    for piece in new.pieces:
        if not is_appendable(piece, base_pieces):
            continue
        if script_filter is not None:
            label = script_filter.label(piece.piece)
            if label is None:
                result.dropped[script_filter.outside(piece.piece)] += 1
                continue
            result.by_script[label] += 1
        appended = merged.pieces.add()
        appended.piece = piece.piece
        appended.type = NORMAL
        appended.score = last_score - 1 - result.added if bpe else piece.score
        base_pieces.add(piece.piece)
        result.added += 1
    merged.trainer_spec.vocab_size = len(merged.pieces)
    return merged, result


def normalizer_note(base, merged, path):
    """A note when the base does not normalize by identity (None when it does): the rule, how
    many appended pieces it makes unreachable, and what it means for a Hugging Face export."""
    spec = base.normalizer_spec
    if spec.name == "identity" and not spec.remove_extra_whitespaces:
        return None
    rules = []
    if spec.name != "identity":
        rules.append(f"{spec.name or 'a custom rule'}: "
                     f"{RULES.get(spec.name, 'a custom character mapping')}")
    if spec.remove_extra_whitespaces:
        rules.append("whitespace runs collapsed (a blank line becomes one \u2581)")
    normalizer = spm.SentencePieceNormalizer(model_proto=base.SerializeToString())
    unreachable = 0
    for piece in merged.pieces[len(base.pieces):]:
        text = piece.piece.replace(WHITESPACE, "")
        if normalizer.normalize(text).lstrip(WHITESPACE) != text:
            unreachable += 1
    lost = (f"{unreachable} appended pieces hold characters it rewrites and are never produced; "
            if unreachable else "")
    return (f"note: --base_spm_model_path {path} normalizes text, not by identity as LLaMA's "
            f"does ({'; '.join(rules)}). The merged model keeps this rule: {lost}a Hugging Face "
            f"tokenizer exported from it gives the training ids only if it applies the same rule")


def merge_tokenizers(base_spm_model_path, new_spm_model_path, output_spm_model_path,
                     scripts=None):
    """Write the merged model; returns a MergeResult (``.added``: pieces appended)."""
    base = load_proto(base_spm_model_path, "--base_spm_model_path")
    new = load_proto(new_spm_model_path, "--new_spm_model_path")
    base_type = MODEL_TYPE_NAMES.get(base.trainer_spec.model_type)
    if base_type not in ("bpe", "unigram"):
        raise TokenizerError(f"--base_spm_model_path {base_spm_model_path}: a {base_type} model; "
                             "only bpe and unigram models can take appended pieces")
    merged, result = merge_protos(base, new, scripts)
    result.note = normalizer_note(base, merged, base_spm_model_path)
    with open(output_spm_model_path, "wb") as f:
        f.write(merged.SerializeToString())
    return result


def read_texts(path):
    """Documents of an evaluation corpus: ``{"text": ...}`` lines for .jsonl, else lines."""
    jsonl = corpus_kind(path) == JSONL
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if jsonl:
                    try:
                        line = json.loads(line)["text"]
                    except (ValueError, KeyError, TypeError):
                        raise TokenizerError(f"--eval_corpus_path {path}:{lineno}: not a JSON "
                                             'line with a "text" field') from None
                line = line.rstrip("\n")
                if line:
                    yield line
    except OSError as e:
        raise TokenizerError(f"--eval_corpus_path {path}: {e.strerror}") from None


def tokenization_stats(sp, texts):
    """{"tokens", "chars", "bytes"} of ``texts`` under the SentencePieceProcessor ``sp``."""
    texts = list(texts)
    tokens = sum(len(ids) for ids in sp.Encode(texts, out_type=int))
    return {"tokens": tokens, "chars": sum(len(t) for t in texts),
            "bytes": sum(len(t.encode("utf-8")) for t in texts)}
