"""SentencePiece training with the settings a model needs to be merged into LLaMA's.

- ``normalization_rule_name="identity"``, no extra whitespace removal, a dummy prefix and split
  digits: as LLaMA's model, so a piece learnt here is the same string the merged model sees
  (under NFKC a full-width ``，`` would be learnt as ``,`` and never match).
- ``byte_fallback``: characters outside the pieces become bytes, never ``<unk>``.
- ``character_coverage`` 0.9995 (SentencePiece's advice for CJK): rare characters stay bytes
  instead of taking pieces.
- unk/bos/eos at 0/1/2 and no pad or user-defined pieces: LLaMA's layout, nothing extra to
  append.

The corpus must be UTF-8: a bad byte is refused naming its line and column, as preprocess.py
does (``data/corpus.py``), before anything is written.
"""
import os
import time

import sentencepiece as spm

from tencentpretrain.data.corpus import check_utf8
from tencentpretrain.tokenizer import TokenizerError

MODEL_TYPES = ("bpe", "unigram")


def train_tokenizer(corpus_path, vocab_size, output_spm_model_path, model_type="bpe",
                    input_sentence_size=2_000_000, character_coverage=0.9995,
                    max_sentence_length=1 << 16, num_threads=None, log=print):
    """Train ``output_spm_model_path`` on the plain-text ``corpus_path`` (one document a
    line; SentencePiece streams the file and samples ``input_sentence_size`` lines)."""
    if not os.path.isfile(corpus_path):
        raise TokenizerError(f"--corpus_path {corpus_path}: no such file")
    if model_type not in MODEL_TYPES:
        raise TokenizerError(f"--model_type {model_type}: expected one of {', '.join(MODEL_TYPES)}")
    if vocab_size < 260:
        raise TokenizerError(f"--vocab_size {vocab_size}: at least 260 (3 special pieces and "
                             "256 byte-fallback pieces come first)")
    check_utf8(corpus_path)  # SentencePiece would silently skip or mangle the bad lines
    prefix = output_spm_model_path[:-len(".model")] if output_spm_model_path.endswith(
        ".model") else output_spm_model_path
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    size_mb = os.path.getsize(corpus_path) / 1e6
    log(f"training a {vocab_size}-piece {model_type} SentencePiece model on {corpus_path} "
        f"({size_mb:.1f} MB, at most {input_sentence_size} lines sampled) ...", flush=True)
    start = time.time()
    try:
        spm.SentencePieceTrainer.train(
            input=corpus_path, model_prefix=prefix, vocab_size=vocab_size, model_type=model_type,
            character_coverage=character_coverage, byte_fallback=True, split_digits=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            add_dummy_prefix=True, allow_whitespace_only_pieces=True,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            input_sentence_size=input_sentence_size, shuffle_input_sentence=True,
            max_sentence_length=max_sentence_length, hard_vocab_limit=True,
            num_threads=num_threads or os.cpu_count() or 1, minloglevel=2)
    except RuntimeError as e:  # e.g. "Vocabulary size is smaller than required_chars"
        raise TokenizerError(f"--corpus_path {corpus_path}: SentencePiece training failed "
                             f"({str(e).strip().splitlines()[-1]})") from None
    model_path = prefix + ".model"
    if model_path != output_spm_model_path:
        os.replace(model_path, output_spm_model_path)
    if os.path.exists(prefix + ".vocab"):
        os.remove(prefix + ".vocab")  # the .model holds everything; a stale .vocab misleads
    log(f"wrote {output_spm_model_path} ({vocab_size} pieces) in {time.time() - start:.0f} s")
    return output_spm_model_path
