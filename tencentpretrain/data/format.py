"""The on-disk dataset format (see docs/data_format.md) and the writer of its shards.

A dataset is a directory: ``meta.json`` plus, per shard, ``NAME.bin`` (tokens back to back),
``NAME.idx.npy`` (int64 sample offsets) and, as meta.json's ``"holds"`` declares,
``NAME.prompt.npy`` (prompt lengths), ``NAME.mask.npy`` (a loss mask) and ``NAME.doc.npy``
(document / example boundaries). Everything is readable with numpy alone; nothing is pickled.
"""
import json
import os
import shutil
from dataclasses import asdict, dataclass

import numpy as np

from tencentpretrain.errors import UserError

FORMAT_NAME = "tencentpretrain-tokens"
FORMAT_VERSION = 1
PACKED_FORMAT_VERSION = 2  # packed alpaca: readers of version 1 must refuse it, not ignore .doc.npy
READABLE_VERSIONS = (FORMAT_VERSION, PACKED_FORMAT_VERSION)
META_FILE = "meta.json"
SHARD_TOKENS = 1 << 28  # a new shard starts once this many tokens would be exceeded

BIN, IDX, PROMPT, DOC = ".bin", ".idx.npy", ".prompt.npy", ".doc.npy"
MASK = ".mask.npy"  # conversation: per token, 1 where the token is trained as a label
MASK_DTYPE = np.dtype("u1")
OFFSET_DTYPE = np.dtype("<i8")
PROMPT_DTYPE = np.dtype("<i4")


@dataclass(frozen=True)
class Holds:
    """What a dataset holds beside its tokens, declared in meta.json by the processor that
    wrote it (``Processor.holds``); readers open exactly this, whatever the processor.

    prompt_lengths: ``.prompt.npy``, one per sample, or per example when packed (--prefix_lm_loss)
    loss_mask: ``.mask.npy``, one byte per token, 1 = trained as a label (--prefix_lm_loss)
    boundaries: ``.doc.npy``, where each document / example starts (segments, ``seg``)
    packed: several whole examples per sample, each isolated in training (data/packing.py)
    seq2seq: each sample is a source (encoder tokens; its prompt length) then a target
        (decoder tokens), for encoder-decoder models (data/seq2seq.py)
    """
    prompt_lengths: bool = False
    loss_mask: bool = False
    boundaries: bool = False
    packed: bool = False
    seq2seq: bool = False

    # datasets written before meta.json declared "holds": what each processor wrote then
    LEGACY = {"lm": dict(boundaries=True), "alpaca": dict(prompt_lengths=True),
              "conversation": dict(loss_mask=True)}

    @classmethod
    def from_meta(cls, meta, where):
        """The declaration of a meta.json (``where`` names it in errors)."""
        declared = meta.get("holds")
        if declared is None:  # written before the declaration: derive it from the old fields
            if meta.get("data_processor") not in cls.LEGACY:
                raise DatasetError(f"{where}: no \"holds\" and unknown data_processor "
                                   f"{meta.get('data_processor')!r}")
            legacy = dict(cls.LEGACY[meta["data_processor"]], packed=bool(meta.get("packed", False)))
            if legacy["packed"]:  # packed alpaca / conversation: example starts in .doc.npy
                legacy["boundaries"] = True
            return cls(**legacy)
        fields = set(asdict(cls()))
        if (not isinstance(declared, dict) or set(declared) - fields
                or not all(isinstance(v, bool) for v in declared.values())):
            raise DatasetError(f"{where}: \"holds\" must map {', '.join(sorted(fields))} "
                               f"to true/false, found {declared!r}")
        holds = cls(**declared)
        if holds.packed and not holds.boundaries:
            raise DatasetError(f"{where}: packed samples need boundaries")
        return holds

    @property
    def trainable_prefix(self):
        """Whether --prefix_lm_loss can tell prompts from answers (prompt lengths or a mask)."""
        return self.prompt_lengths or self.loss_mask

    def to_dict(self):
        held = asdict(self)
        if not self.seq2seq:  # declared only by seq2seq datasets: others' meta.json unchanged
            del held["seq2seq"]
        return held


class DatasetError(UserError):
    """A dataset or corpus that cannot be written or read; the message is one line."""


class CorpusError(DatasetError):
    """Bad input corpus; the message names the file and, where known, the line."""


def token_dtype(vocab_size):
    """uint16 when every id fits (vocab_size <= 65536), else uint32; always little-endian."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


def numpy_dtype(name):
    return np.dtype(name).newbyteorder("<")


def shard_name(index):
    return f"shard_{index:05d}"


def write_meta(directory, meta):
    with open(os.path.join(directory, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2, ensure_ascii=False)
        f.write("\n")


def raw_to_npy(raw_path, npy_path, dtype):
    """Prefix a raw little-endian 1-D array file with an .npy header (streaming copy)."""
    dtype = np.dtype(dtype)
    count = os.path.getsize(raw_path) // dtype.itemsize
    header = {"descr": dtype.str, "fortran_order": False, "shape": (count,)}
    with open(raw_path, "rb") as src, open(npy_path, "wb") as dst:
        np.lib.format.write_array_header_1_0(dst, header)
        shutil.copyfileobj(src, dst, 1 << 22)
    os.remove(raw_path)


class ShardWriter:
    """Appends samples (tokens back to back + their lengths) to shards in `directory`.

    Shard boundaries depend only on the sample sequence, so the same samples always give
    byte-identical shards. The offset and prompt arrays are streamed to raw files and given
    their .npy header when the shard closes, so memory stays flat whatever the shard size.
    `packed`: samples hold several whole examples; prompt lengths are per example and the
    example starts go to ``.doc.npy``.
    """

    def __init__(self, directory, dtype, with_prompts, shard_tokens=SHARD_TOKENS, packed=False,
                 with_mask=False):
        self.directory = directory
        self.with_mask = with_mask
        self.dtype = numpy_dtype(dtype)
        self.with_prompts = with_prompts
        self.packed = packed
        self.shard_tokens = shard_tokens
        self.shards = []  # dicts: name, num_samples, num_tokens, start (global token offset)
        self.total_tokens = 0
        self._files = None

    def _path(self, suffix):
        return os.path.join(self.directory, self.shards[-1]["name"] + suffix)

    def _open_shard(self):
        self.shards.append({"name": shard_name(len(self.shards)), "num_samples": 0,
                            "num_tokens": 0, "start": self.total_tokens})
        self._files = {BIN: open(self._path(BIN), "wb"), IDX: open(self._path(IDX + ".raw"), "wb")}
        self._files[IDX].write(np.zeros(1, OFFSET_DTYPE).tobytes())
        if self.with_prompts:
            self._files[PROMPT] = open(self._path(PROMPT + ".raw"), "wb")
        if self.with_mask:
            self._files[MASK] = open(self._path(MASK + ".raw"), "wb")
        if self.packed:
            self._files[DOC] = open(self._path(DOC + ".raw"), "wb")
            self.shards[-1]["num_doc_starts"] = 0

    def _close_shard(self):
        for f in self._files.values():
            f.close()
        self._files = None
        raw_to_npy(self._path(IDX + ".raw"), self._path(IDX), OFFSET_DTYPE)
        if self.with_prompts:
            raw_to_npy(self._path(PROMPT + ".raw"), self._path(PROMPT), PROMPT_DTYPE)
        if self.with_mask:
            raw_to_npy(self._path(MASK + ".raw"), self._path(MASK), MASK_DTYPE)
        if self.packed:
            raw_to_npy(self._path(DOC + ".raw"), self._path(DOC), OFFSET_DTYPE)

    def add(self, tokens, lengths, prompt_lengths=None, example_lengths=None, mask=None):
        """Append samples: `tokens` holds them back to back, `lengths[i]` is sample i's size.

        Packed: `example_lengths` are the sizes of the examples back to back (sample ends are
        example ends) and `prompt_lengths` is per example. `mask`: one byte per token."""
        ends = np.cumsum(lengths, dtype=np.int64)
        example_ends = np.cumsum(example_lengths, dtype=np.int64) if self.packed else None
        i = 0
        while i < len(ends):
            if self._files is None:
                self._open_shard()
            shard = self.shards[-1]
            base = ends[i - 1] if i else 0
            room = self.shard_tokens - shard["num_tokens"]
            j = int(np.searchsorted(ends, base + room, side="right"))
            if j == i:  # the next sample does not fit: close, unless the shard is empty
                if shard["num_samples"]:
                    self._close_shard()
                    continue
                j = i + 1
            self._files[BIN].write(np.ascontiguousarray(tokens[base:ends[j - 1]], self.dtype).tobytes())
            if self.with_mask:
                self._files[MASK].write(np.ascontiguousarray(mask[base:ends[j - 1]], MASK_DTYPE).tobytes())
            offsets = shard["num_tokens"] + (ends[i:j] - base)
            self._files[IDX].write(offsets.astype(OFFSET_DTYPE).tobytes())
            if self.packed:
                a, b = np.searchsorted(example_ends, [base, ends[j - 1]], side="right")
                starts = shard["num_tokens"] + (example_ends[a:b] - example_lengths[a:b] - base)
                self._files[DOC].write(starts.astype(OFFSET_DTYPE).tobytes())
                if self.with_prompts:
                    self._files[PROMPT].write(np.asarray(prompt_lengths[a:b], PROMPT_DTYPE).tobytes())
                shard["num_doc_starts"] += int(b - a)
            elif self.with_prompts:
                self._files[PROMPT].write(np.asarray(prompt_lengths[i:j], PROMPT_DTYPE).tobytes())
            shard["num_samples"] += j - i
            shard["num_tokens"] = int(offsets[-1])
            self.total_tokens += int(ends[j - 1] - base)
            if j < len(ends):
                self._close_shard()
            i = j

    def close(self):
        """Finish the last shard; returns the shard list (with global `start` offsets)."""
        if self._files is not None:
            self._close_shard()
        return self.shards
