"""Memory-mapped reader of a preprocessed dataset directory (docs/data_format.md).

Opening checks meta.json against every file (presence, size, dtype, shape), so a truncated,
foreign or half-written dataset is refused with a DatasetError naming the file. Samples are
read through np.memmap: memory does not grow with the dataset's size.
"""
import os
from typing import NamedTuple, Optional

import numpy as np

from tencentpretrain.data.format import (BIN, DOC, FORMAT_NAME, IDX, MASK, MASK_DTYPE, META_FILE,
                                         OFFSET_DTYPE, PACKED_FORMAT_VERSION, PROMPT, PROMPT_DTYPE,
                                         READABLE_VERSIONS, DatasetError, Holds, numpy_dtype)
from tencentpretrain.utils.files import read_json

REQUIRED_META = ("format_version", "data_processor", "seq_length", "vocab_size", "dtype",
                 "bos_id", "eos_id", "pad_id", "tokenizer_sha256", "num_samples", "num_tokens",
                 "shards")


class Sample(NamedTuple):
    tokens: np.ndarray  # int64, 1 <= length <= seq_length + 1
    prompt_length: int  # tokens of the prompt, bos included (0 without; packed: first example's)
    segments: np.ndarray  # int32 per token: 1-based document / example number within the sample
    example_prompts: Optional[np.ndarray] = None  # packed: prompt length of each example (segment)
    loss_mask: Optional[np.ndarray] = None  # with a loss mask: bool per token, trained as a label
    seq2seq: bool = False  # tokens = source (prompt_length tokens) + target (data/seq2seq.py)


def _load_meta(path):
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isdir(path):
        raise DatasetError(f"{path}: no such dataset directory")
    if not os.path.isfile(meta_path):
        raise DatasetError(f"{meta_path}: missing (not a dataset, or an interrupted run)")
    meta = read_json(meta_path, DatasetError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DatasetError(f"{meta_path}: not a {FORMAT_NAME} dataset")
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise DatasetError(f"{meta_path}: format_version {meta.get('format_version')!r} is not "
                           f"supported (this code reads {', '.join(map(str, READABLE_VERSIONS))})")
    missing = [key for key in REQUIRED_META if key not in meta]
    if missing:
        raise DatasetError(f"{meta_path}: missing {', '.join(missing)}")
    if not isinstance(meta["data_processor"], str) or meta["dtype"] not in ("uint16", "uint32"):
        raise DatasetError(f"{meta_path}: unknown data_processor/dtype "
                           f"{meta['data_processor']!r}/{meta['dtype']!r}")
    holds = Holds.from_meta(meta, meta_path)
    if holds.packed != (meta["format_version"] == PACKED_FORMAT_VERSION) or holds.packed != meta.get("packed", False):
        raise DatasetError(f"{meta_path}: format_version {meta['format_version']}, data_processor "
                           f"{meta['data_processor']!r} and packed {holds.packed} do not go together "
                           f"(packed = format_version {PACKED_FORMAT_VERSION}, holding boundaries)")
    return meta


def _open_npy(path, dtype, length):
    """Memory-map a 1-D .npy array, checking its dtype and length."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{path}: missing") from None
    except (ValueError, OSError) as e:
        raise DatasetError(f"{path}: not a readable .npy array ({e})") from None
    if array.dtype != dtype or array.ndim != 1 or (length is not None and len(array) != length):
        raise DatasetError(f"{path}: expected {dtype} of length {length}, "
                           f"found {array.dtype} of shape {array.shape}")
    return array


class _Shard:
    """The memory maps of one shard, checked against its entry in meta.json."""

    def __init__(self, directory, entry, dtype, holds):
        name = entry["name"]
        base = os.path.join(directory, name)
        num_samples, num_tokens = entry["num_samples"], entry["num_tokens"]
        expected = num_tokens * dtype.itemsize
        if not os.path.isfile(base + BIN):
            raise DatasetError(f"{base + BIN}: missing")
        if os.path.getsize(base + BIN) != expected:
            raise DatasetError(f"{base + BIN}: {os.path.getsize(base + BIN)} bytes, expected "
                               f"{expected} ({num_tokens} {dtype.name} tokens): truncated or foreign")
        self.tokens = np.memmap(base + BIN, dtype, mode="r") if num_tokens else np.empty(0, dtype)
        self.offsets = _open_npy(base + IDX, OFFSET_DTYPE, num_samples + 1)
        if self.offsets[0] != 0 or self.offsets[-1] != num_tokens:
            raise DatasetError(f"{base + IDX}: offsets do not span {base + BIN}")
        self.prompts = self.doc_starts = self.mask = None
        packed = holds.packed
        if holds.loss_mask:
            self.mask = _open_npy(base + MASK, MASK_DTYPE, num_tokens)
        if holds.prompt_lengths:  # one prompt length per example (= per sample unless packed)
            self.prompts = _open_npy(base + PROMPT, PROMPT_DTYPE,
                                     entry.get("num_doc_starts") if packed else num_samples)
        if holds.boundaries:
            self.doc_starts = _open_npy(base + DOC, OFFSET_DTYPE, entry.get("num_doc_starts"))
        self.packed = packed
        self.seq2seq = holds.seq2seq

    def sample(self, i):
        sample = self._sample(i)
        if self.seq2seq:
            sample = sample._replace(seq2seq=True)
        if self.mask is None:
            return sample
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        prompts = sample.example_prompts
        return sample._replace(example_prompts=prompts, loss_mask=np.array(self.mask[start:end], bool))

    def _sample(self, i):
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        tokens = np.array(self.tokens[start:end], dtype=np.int64)
        if self.doc_starts is None:
            prompt = int(self.prompts[i]) if self.prompts is not None else 0
            return Sample(tokens, prompt, np.ones(end - start, np.int32))
        # each document starting strictly inside the sample opens the next segment
        first, stop = np.searchsorted(self.doc_starts, [start, end - 1], side="right")
        opens = np.zeros(end - start, np.int32)
        opens[self.doc_starts[first:stop] - start] = 1
        segments = 1 + np.cumsum(opens, dtype=np.int32)
        if not self.packed:
            return Sample(tokens, 0, segments)
        # a packed sample starts with an example: its prompts are those of examples first-1..
        # (0 each without prompt lengths: a loss mask, or nothing, tells what is trained)
        prompts = (np.array(self.prompts[first - 1:stop], np.int64) if self.prompts is not None
                   else np.zeros(stop - first + 1, np.int64))
        return Sample(tokens, int(prompts[0]), segments, prompts)


class TokenDataset:
    """Samples of a preprocessed dataset: ``ds[i]`` -> Sample(tokens, prompt_length, segments)."""

    def __init__(self, path):
        self.path = path
        self.meta = meta = _load_meta(path)
        self.seq_length = meta["seq_length"]
        self.data_processor = meta["data_processor"]  # recorded, never used to read
        self.vocab_size = meta["vocab_size"]
        self.bos_id, self.eos_id, self.pad_id = meta["bos_id"], meta["eos_id"], meta["pad_id"]
        self.tokenizer_sha256 = meta["tokenizer_sha256"]
        self.holds = Holds.from_meta(meta, os.path.join(path, META_FILE))  # what to open
        # what --prefix_lm_loss needs: prompt lengths or a loss mask
        self.has_prompt_lengths = self.holds.trainable_prefix
        self.packed = self.holds.packed  # several isolated examples per sample
        self.num_tokens = meta["num_tokens"]
        dtype = numpy_dtype(meta["dtype"])
        try:
            self._shards = [_Shard(path, entry, dtype, self.holds) for entry in meta["shards"]]
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{os.path.join(path, META_FILE)}: malformed shard list ({e})") from None
        counts = [entry["num_samples"] for entry in meta["shards"]]
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        if self._starts[-1] != meta["num_samples"] or sum(e["num_tokens"] for e in meta["shards"]) != self.num_tokens:
            raise DatasetError(f"{os.path.join(path, META_FILE)}: shard counts do not add up "
                               f"to num_samples/num_tokens")

    def check_fits(self, tokenizer, vocab_size, max_seq_length=None, config_source=None):
        """The one guard between a dataset and what reads it (training, evaluation): made
        with this tokenizer, ids inside the model's vocabulary, samples the model can take."""
        if self.tokenizer_sha256 != tokenizer.sha256:
            raise DatasetError(f"{self.path} was made with another tokenizer than "
                               f"{tokenizer.source} (sha256 {self.tokenizer_sha256[:12]}... != "
                               f"{tokenizer.sha256[:12]}...)")
        if self.vocab_size > vocab_size:
            raise DatasetError(f"{self.path} has a vocabulary of {self.vocab_size} tokens, the "
                               f"model only {vocab_size}")
        if max_seq_length is not None and self.seq_length > max_seq_length:
            raise DatasetError(f"{self.path} has seq_length {self.seq_length}, above "
                               f"max_seq_length {max_seq_length} of {config_source}")

    def __len__(self):
        return int(self._starts[-1])

    def __getitem__(self, i):
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range [0, {len(self)})")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._shards[k].sample(i - int(self._starts[k]))
