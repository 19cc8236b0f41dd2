"""``lm`` (alias ``llm_pretrain``): documents back to back, cut into samples of seq_length + 1.

Each document becomes [bos] + ids + [eos] (no bos where the tokenizer adds none); the token
stream of all documents, in corpus order, is cut into samples of seq_length + 1 tokens
(global packing, so the samples do not depend on processes_num), and each shard records
where documents start (``.doc.npy``).
"""
import os
from itertools import chain

import numpy as np

from tencentpretrain.data import corpus
from tencentpretrain.data.format import DOC, OFFSET_DTYPE, raw_to_npy
from tencentpretrain.data.processors.base import (BATCH_CHARS, COPY_ITEMS, ConcatReader, Processor,
                                                  iter_raw, text_field)


class LmProcessor(Processor):
    """Documents as [bos] + ids + [eos] back to back, and their lengths.

    A document arrives in one or more text pieces (long ones are cut, see corpus.py); the
    batch keeps, per piece, whether it opens (bos) or closes (eos) its document.
    """
    name = "lm"
    extensions = (".tokens", ".lengths")
    with_boundaries = True

    def __init__(self, task, tokenizer):
        super().__init__(task, tokenizer)
        self.texts, self.opens, self.closes = [], [], []
        self.in_document = False
        self.open_length = 0  # tokens already written for the document still open

    def add_text(self, text, last):
        if text or (last and self.in_document):
            self.texts.append(text)
            self.opens.append(not self.in_document)
            self.closes.append(last)
            self.in_document = not last
            self.chars += len(text)
            if self.chars >= BATCH_CHARS:
                self.flush()
        elif last:
            self.skipped["empty document"] += 1

    def add_record(self, lineno, record):
        pieces = list(corpus.split_text(text_field(record, "text", lineno).strip(), corpus.PIECE_BYTES))
        for i, piece in enumerate(pieces):
            self.add_text(piece.strip(), i == len(pieces) - 1)

    def flush(self):
        if not self.texts:
            return
        ids = self.tokenizer.encode_batch(self.texts)
        bos, eos = tuple(self.tokenizer.bos_ids), (self.tokenizer.eos_id,)

        def with_specials():
            for piece_ids, opens, closes in zip(ids, self.opens, self.closes):
                if opens:
                    yield bos
                yield piece_ids
                if closes:
                    yield eos

        sizes = np.fromiter(map(len, ids), np.int64, len(ids))
        sizes += len(bos) * np.array(self.opens, np.int64) + np.array(self.closes, np.int64)
        ends = np.cumsum(sizes)
        self.write(".tokens", np.fromiter(chain.from_iterable(with_specials()), self.dtype, ends[-1]))
        document_ends = ends[np.array(self.closes)]
        if document_ends.size:
            self.write(".lengths", np.diff(document_ends, prepend=-self.open_length).astype(OFFSET_DTYPE))
            self.open_length = int(ends[-1] - document_ends[-1])
        else:
            self.open_length += int(ends[-1])
        self.documents += document_ends.size
        self.tokens += int(ends[-1])
        self.texts, self.opens, self.closes, self.chars = [], [], [], 0

    @classmethod
    def assemble(cls, prefixes, writer, task, staging):
        """Cut the documents of all parts, back to back, into samples of seq_length + 1
        tokens (the last one shorter) and give each shard its document starts."""
        size = task.seq_length + 1
        tokens = ConcatReader([p + ".tokens" for p in prefixes], writer.dtype)
        while (block := tokens.read(max(1, COPY_ITEMS // size) * size)).size:
            lengths = np.full(-(-block.size // size), size, np.int64)
            lengths[-1] = block.size - size * (len(lengths) - 1)
            writer.add(block, lengths)
        shards = writer.close()

        starts_path = os.path.join(staging, "parts", "document_starts")
        with open(starts_path, "wb") as out:
            position = 0
            for lengths in chain.from_iterable(iter_raw(p + ".lengths", OFFSET_DTYPE) for p in prefixes):
                ends = position + np.cumsum(lengths)
                out.write((ends - lengths).tobytes())
                position = int(ends[-1])
        starts = np.memmap(starts_path, OFFSET_DTYPE, mode="r")
        for shard in shards:
            first, stop = np.searchsorted(starts, [shard["start"], shard["start"] + shard["num_tokens"]])
            raw = os.path.join(staging, shard["name"] + DOC + ".raw")
            with open(raw, "wb") as out:
                for a in range(first, stop, COPY_ITEMS):
                    out.write((starts[a:min(stop, a + COPY_ITEMS)] - shard["start"]).astype(OFFSET_DTYPE).tobytes())
            raw_to_npy(raw, os.path.join(staging, shard["name"] + DOC), OFFSET_DTYPE)
            shard["num_doc_starts"] = int(stop - first)
        del starts
        return shards
