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
"""
import json

from tencentpretrain.data.corpus import JSONL, corpus_kind
from tencentpretrain.tokenizer import TokenizerError
from tencentpretrain.vocab.spm_model import MODEL_TYPE_NAMES, NORMAL, load_proto

WHITESPACE = "\u2581"


def is_appendable(piece, base_pieces):
    text = piece.piece
    return (piece.type == NORMAL and text not in base_pieces and text.strip(WHITESPACE) != ""
            and not any(ord(ch) < 128 for ch in text))


def merge_protos(base, new):
    """(merged ModelProto, number of pieces appended); ``base`` and ``new`` are untouched."""
    merged = type(base)()
    merged.CopyFrom(base)
    base_pieces = {p.piece for p in base.pieces}
    bpe = MODEL_TYPE_NAMES.get(base.trainer_spec.model_type) == "bpe"
    last_score = base.pieces[-1].score
    added = 0
    for piece in new.pieces:
        if not is_appendable(piece, base_pieces):
            continue
        appended = merged.pieces.add()
        appended.piece = piece.piece
        appended.type = NORMAL
        appended.score = last_score - 1 - added if bpe else piece.score
        base_pieces.add(piece.piece)
        added += 1
    merged.trainer_spec.vocab_size = len(merged.pieces)
    return merged, added


def merge_tokenizers(base_spm_model_path, new_spm_model_path, output_spm_model_path):
    """Write the merged model; returns the number of pieces appended."""
    base = load_proto(base_spm_model_path, "--base_spm_model_path")
    new = load_proto(new_spm_model_path, "--new_spm_model_path")
    base_type = MODEL_TYPE_NAMES.get(base.trainer_spec.model_type)
    if base_type not in ("bpe", "unigram"):
        raise TokenizerError(f"--base_spm_model_path {base_spm_model_path}: a {base_type} model; "
                             "only bpe and unigram models can take appended pieces")
    merged, added = merge_protos(base, new)
    with open(output_spm_model_path, "wb") as f:
        f.write(merged.SerializeToString())
    return added


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
