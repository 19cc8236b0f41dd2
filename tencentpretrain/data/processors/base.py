"""What every data processor shares: the worker-side part files and the readers of them.

A processor is a class with two halves:

* worker side (an instance per byte range of the corpus): ``add_text`` / ``add_record`` take
  the corpus as builder.py streams it, ``flush`` tokenizes a batch with one tokenizer
  call and appends it to the part files named by ``extensions``; ``finish`` returns counts.
* main side (class methods): ``check`` refuses options and corpora it cannot take,
  ``assemble`` turns the part files of all workers, in corpus order, into shards;
  ``holds`` declares what those shards hold, written to meta.json as ``"holds"``.

Registering one in processors/__init__.py is all builder.py and preprocess.py need; readers
(``TokenDataset``, ``collate``) open what meta.json declares and never ask for the processor.
"""
from collections import Counter
from itertools import chain

import numpy as np

from tencentpretrain.data.corpus import TEXT, LineError
from tencentpretrain.data.format import OFFSET_DTYPE, PROMPT_DTYPE, CorpusError, numpy_dtype

COPY_ITEMS = 1 << 22  # tokens / offsets per step when the main process assembles shards
BATCH_CHARS = 1 << 20  # text per tokenizer call: bounds the Python id lists (tens of MB)
PROMPT_TOO_LONG = "prompt too long for seq_length"  # a skip reason; see seq_length_to_keep
FIRST_PAIR_TOO_LONG = "first turn pair too long for seq_length"  # conversations: the same
JSON_TYPES = {dict: "an object", list: "an array", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


def text_field(record, key, lineno, optional=False):
    value = record.get(key)
    if optional and value is None:
        return ""
    if key not in record:
        raise LineError(lineno, f'missing "{key}"')
    if not isinstance(value, str):
        raise LineError(lineno, f'"{key}" is {JSON_TYPES.get(type(value), "not text")}, not a string')
    return value


class Processor:
    """Base of the registered processors (see the module docstring)."""
    name = None
    noun = "documents"  # what one unit of the corpus is called in the summary
    extensions = ()  # part files a worker writes: prefix + extension
    reads_text = True  # accepts a .txt corpus
    with_prompts = False  # stores prompt lengths (for --prefix_lm_loss)
    with_mask = False  # stores a per-token loss mask (for --prefix_lm_loss)
    can_pack = False  # accepts --packing
    with_boundaries = False  # stores where documents start (.doc.npy) even unpacked (lm)

    def __init__(self, task, tokenizer):
        self.task, self.tokenizer = task, tokenizer
        self.dtype = numpy_dtype(task.dtype)
        self.files = {ext: open(task.prefix + ext, "wb") for ext in self.extensions}
        self.documents, self.tokens, self.truncated, self.chars = 0, 0, 0, 0
        self.skipped = Counter()
        self.seq_length_to_keep = 0  # the least --seq_length that skips no unit for its length

    @classmethod
    def check_corpus(cls, corpus_path, kind):
        if kind == TEXT and not cls.reads_text:
            raise CorpusError(f"{corpus_path}: --data_processor {cls.name} reads a JSON array "
                              f"(.json) or JSON lines (.jsonl) file")

    @classmethod
    def holds(cls, packing):
        """What the dataset holds (meta.json ``"holds"``; data/format.py ``Holds``)."""
        return {"prompt_lengths": cls.with_prompts, "loss_mask": cls.with_mask,
                "boundaries": cls.with_boundaries or packing, "packed": bool(packing)}

    @classmethod
    def template(cls, prompt_template, **chat_options):
        """The prompt template workers use (None for processors without prompts); the chat
        options (chat_template, tokenizer, train_on_prompt, mask_history) are conversation's."""
        return None

    @classmethod
    def assemble(cls, prefixes, writer, task, staging):
        """Part files (in corpus order) -> shards; returns the writer's shard list."""
        raise NotImplementedError

    def add_text(self, text, last):
        """A stripped piece of a .txt line; `last`: the line ends with it."""
        raise NotImplementedError

    def add_record(self, lineno, record):
        """One JSON object of a .json / .jsonl corpus."""
        raise NotImplementedError

    def write(self, ext, array):
        self.files[ext].write(array.tobytes())

    def write_examples(self, samples, prompt_lengths):
        """One example per sample with its prompt length (.tokens, .lengths, .prompts)."""
        lengths = np.fromiter(map(len, samples), OFFSET_DTYPE, len(samples))
        self.write(".tokens", np.fromiter(chain.from_iterable(samples), self.dtype, lengths.sum()))
        self.write(".lengths", lengths)
        self.write(".prompts", np.array(prompt_lengths, PROMPT_DTYPE))
        self.documents += len(samples)
        self.tokens += int(lengths.sum())

    def finish(self):
        self.flush()
        for f in self.files.values():
            f.close()
        return {"documents": self.documents, "tokens": self.tokens,
                "truncated": self.truncated, "skipped": dict(self.skipped),
                "seq_length_to_keep": self.seq_length_to_keep}

    def flush(self):
        raise NotImplementedError


class ConcatReader:
    """Reads given numbers of items from the concatenation of raw array files."""

    def __init__(self, paths, dtype):
        self.paths, self.dtype, self.file = iter(paths), dtype, None

    def read(self, count):
        chunks = []
        while count > 0:
            if self.file is None:
                path = next(self.paths, None)
                if path is None:
                    break
                self.file = open(path, "rb")
            chunk = np.fromfile(self.file, self.dtype, count)
            if chunk.size < count:
                self.file.close()
                self.file = None
            chunks.append(chunk)
            count -= chunk.size
        return np.concatenate(chunks) if chunks else np.empty(0, self.dtype)


def iter_raw(path, dtype, count=COPY_ITEMS):
    """A raw array file in chunks of at most `count` items."""
    with open(path, "rb") as f:
        while (chunk := np.fromfile(f, dtype, count)).size:
            yield chunk


def assemble_examples(prefixes, writer):
    """``assemble`` for part files of ``Processor.write_examples``: every example, in corpus
    order, a sample of its own with its prompt length; returns the writer's shard list."""
    tokens = ConcatReader([p + ".tokens" for p in prefixes], writer.dtype)
    for prefix in prefixes:
        prompts = iter_raw(prefix + ".prompts", PROMPT_DTYPE)
        for lengths in iter_raw(prefix + ".lengths", OFFSET_DTYPE):
            writer.add(tokens.read(int(lengths.sum())), lengths, next(prompts))
    return writer.close()
