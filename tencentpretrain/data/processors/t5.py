"""``t5``: span corruption of an ``lm`` corpus (T5 pre-training), source/target samples.

Workers tokenize documents exactly as ``lm`` does ([bos] + ids + [eos] back to back, global
order, so nothing depends on --processes_num). The main process cuts that stream into chunks
of ``data/seq2seq.raw_length`` tokens (the most whose corrupted source fits --seq_length),
masks each chunk (--noise_density, --mean_noise_span_length; numpy Generator seeded with
(--seed, chunk number)) and stores source + target per sample, the source's length as the
prompt length; meta.json declares ``"seq2seq": true``.

Sentinels ``<extra_id_0>``, ``<extra_id_1>``, ... are looked up by name in the tokenizer (T5's
vocabulary has them counting down from its last id); a tokenizer without them is refused.
"""
from dataclasses import dataclass

import numpy as np

from tencentpretrain.data.format import DatasetError, OFFSET_DTYPE, PROMPT_DTYPE
from tencentpretrain.data.seq2seq import corrupt, max_spans, noise_mask, raw_length
from tencentpretrain.data.processors.base import COPY_ITEMS, ConcatReader
from tencentpretrain.data.processors.lm import LmProcessor


@dataclass(frozen=True)
class SpanCorruption:
    seed: int
    noise_density: float
    mean_noise_span_length: float
    sentinels: tuple  # ids of <extra_id_0>, <extra_id_1>, ...
    eos_id: int

    def to_dict(self):
        """What meta.json records (under "prompt_template", the processor's options)."""
        return {"span_corruption": {"seed": self.seed, "noise_density": self.noise_density,
                                    "mean_noise_span_length": self.mean_noise_span_length}}


def sentinel_ids(tokenizer, count):
    """Ids of <extra_id_0> .. <extra_id_{count-1}>, by name; one-line error when missing."""
    ids = []
    for i in range(count):
        piece = f"<extra_id_{i}>"
        if hasattr(tokenizer, "sp"):
            token_id = tokenizer.sp.PieceToId(piece)
            token_id = None if tokenizer.sp.IdToPiece(token_id) != piece else token_id
        else:
            token_id = tokenizer.hf.token_to_id(piece)
        if token_id is None:
            raise DatasetError(
                f"{tokenizer.source}: no sentinel token {piece} (span corruption needs "
                f"<extra_id_0>..<extra_id_{count - 1}>); add them with scripts/extend_vocab.py "
                f"--add_sentinel_tokens 100 (or use T5's tokenizer)")
        ids.append(int(token_id))
    return tuple(ids)


class T5Processor(LmProcessor):
    name = "t5"
    with_boundaries = False
    with_prompts = False  # no --prompt_template; prompt lengths (the sources) per holds()

    @classmethod
    def holds(cls, packing):
        return {"prompt_lengths": True, "loss_mask": False, "boundaries": False,
                "packed": False, "seq2seq": True}

    @classmethod
    def template(cls, prompt_template, tokenizer=None, seed=7, noise_density=0.15,
                 mean_noise_span_length=3.0, **chat_options):
        if not 0.0 < noise_density < 1.0:
            raise DatasetError(f"--noise_density must be in (0, 1), got {noise_density}")
        if mean_noise_span_length < 1:
            raise DatasetError(f"--mean_noise_span_length must be at least 1, got "
                               f"{mean_noise_span_length}")
        if tokenizer is not None:
            sentinel_ids(tokenizer, 1)  # refused before any worker starts
        return SpanCorruption(seed, float(noise_density), float(mean_noise_span_length), (),
                              tokenizer.eos_id if tokenizer is not None else None)

    @classmethod
    def assemble(cls, prefixes, writer, task, staging):
        from tencentpretrain.tokenizer import load_tokenizer
        options = task.template
        tokenizer = load_tokenizer(task.spm_model_path, task.tokenizer_path)
        length = raw_length(task.seq_length, options.noise_density, options.mean_noise_span_length)
        sentinels = sentinel_ids(tokenizer, max_spans(length, options.noise_density,
                                                      options.mean_noise_span_length))
        tokens = ConcatReader([p + ".tokens" for p in prefixes], writer.dtype)
        chunk = 0
        per_block = max(1, COPY_ITEMS // length)
        while (block := tokens.read(per_block * length)).size:
            samples, lengths, prompts = [], [], []
            for start in range(0, block.size, length):
                piece = block[start:start + length]
                if piece.size >= 2:
                    rng = np.random.default_rng([options.seed, chunk])
                    mask = noise_mask(piece.size, options.noise_density,
                                      options.mean_noise_span_length, rng)
                    source, target = corrupt(piece, mask, sentinels, tokenizer.eos_id)
                    samples += [source, target]
                    lengths.append(source.size + target.size)
                    prompts.append(source.size)
                chunk += 1
            if samples:
                writer.add(np.concatenate(samples), np.array(lengths, OFFSET_DTYPE),
                           np.array(prompts, PROMPT_DTYPE))
        return writer.close()
