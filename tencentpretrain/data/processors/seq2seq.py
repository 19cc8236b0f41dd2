"""``seq2seq``: source/target pairs for encoder-decoder tuning (T5, TencentPretrain's ``mt``).

Corpora: JSON lines / a JSON array of ``{"source": ..., "target": ...}`` records or alpaca
records (``instruction`` + ``input`` as the source, ``output`` as the target), or text lines
``source<TAB>target``. Each sample is the source's ids + [eos] (at most --seq_length tokens)
followed by the target's ids + [eos] (at most --tgt_seq_length, default --seq_length), the
source's length stored as the prompt length; meta.json declares ``"seq2seq": true`` and the
training batch is data/seq2seq.py's ``collate_seq2seq`` (decoder input: pad + target shifted
right, T5's decoder start). A source or target too long is truncated (its last kept token is
eos, as inference/generate_seq2seq.py cuts a source) or, with --too_long skip, the pair is
skipped; both are counted in the summary and meta.json.
"""
from dataclasses import dataclass

from tencentpretrain.data.corpus import LineError
from tencentpretrain.data.format import DatasetError
from tencentpretrain.data.processors.base import (BATCH_CHARS, Processor, assemble_examples,
                                                  text_field)

SOURCE_TOO_LONG = "source too long for --seq_length"
TARGET_TOO_LONG = "target too long for --tgt_seq_length"
NO_TAB = "line without a tab (source<TAB>target)"
TOO_LONG = ("truncate", "skip")


@dataclass(frozen=True)
class PairOptions:
    tgt_seq_length: int  # None: --seq_length
    too_long: str

    def to_dict(self):
        """What meta.json records (under "prompt_template", the processor's options)."""
        return {"seq2seq": {"tgt_seq_length": self.tgt_seq_length, "too_long": self.too_long}}


def alpaca_source(instruction, input_text):
    return f"{instruction}\n{input_text}" if input_text else instruction


class Seq2seqProcessor(Processor):
    name = "seq2seq"
    noun = "pairs"
    extensions = (".tokens", ".lengths", ".prompts")

    def __init__(self, task, tokenizer):
        super().__init__(task, tokenizer)
        self.sources, self.targets, self.line = [], [], []

    @classmethod
    def holds(cls, packing):
        return {"prompt_lengths": True, "loss_mask": False, "boundaries": False,
                "packed": False, "seq2seq": True}

    @classmethod
    def template(cls, prompt_template, tgt_seq_length=None, too_long="truncate", seed=None,
                 **chat_options):
        if tgt_seq_length is not None and tgt_seq_length < 1:
            raise DatasetError(f"--tgt_seq_length must be at least 1, got {tgt_seq_length}")
        if too_long not in TOO_LONG:
            raise DatasetError(f"--too_long {too_long}: choose from {', '.join(TOO_LONG)}")
        return PairOptions(tgt_seq_length, too_long)

    def _add(self, source, target):
        self.sources.append(source)
        self.targets.append(target)
        self.chars += len(source) + len(target)
        if self.chars >= BATCH_CHARS:
            self.flush()

    def add_text(self, text, last):
        self.line.append(text)
        if not last:
            return
        line, self.line = "".join(self.line), []
        if not line:
            self.skipped["blank line"] += 1
            return
        source, tab, target = line.partition("\t")
        if not tab:
            self.skipped[NO_TAB] += 1
            return
        self._add(source.strip(), target.strip())

    def add_record(self, lineno, record):
        if "source" in record or "target" in record:
            self._add(text_field(record, "source", lineno), text_field(record, "target", lineno))
        elif "instruction" in record:
            self._add(alpaca_source(text_field(record, "instruction", lineno),
                                    text_field(record, "input", lineno, optional=True)),
                      text_field(record, "output", lineno))
        else:
            raise LineError(lineno, 'neither "source"/"target" nor alpaca "instruction"/"output"')

    def _fit(self, ids, limit, reason):
        """ids + [eos] within ``limit`` tokens: truncated (eos kept last) or None (skipped)."""
        eos = self.tokenizer.eos_id
        if len(ids) + 1 <= limit:
            return ids + [eos]
        if self.task.template.too_long == "skip":
            self.skipped[reason] += 1
            return None
        return ids[:limit - 1] + [eos]

    def flush(self):
        if not self.sources:
            return
        ids = self.tokenizer.encode_batch(self.sources + self.targets)
        options = self.task.template
        src_limit = self.task.seq_length
        tgt_limit = options.tgt_seq_length or self.task.seq_length
        samples, prompt_lengths = [], []
        for source, target in zip(ids[:len(self.sources)], ids[len(self.sources):]):
            src = self._fit(source, src_limit, SOURCE_TOO_LONG)
            tgt = self._fit(target, tgt_limit, TARGET_TOO_LONG) if src is not None else None
            if src is None or tgt is None:
                continue
            if len(source) + 1 > src_limit or len(target) + 1 > tgt_limit:
                self.truncated += 1
            samples.append(src + tgt)
            prompt_lengths.append(len(src))
        self.write_examples(samples, prompt_lengths)
        self.sources, self.targets, self.chars = [], [], 0

    @classmethod
    def assemble(cls, prefixes, writer, task, staging):
        return assemble_examples(prefixes, writer)
