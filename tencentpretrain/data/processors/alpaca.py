"""``alpaca`` (alias ``llm_sft``): instruction examples, one per sample or packed.

Each example is [bos] + prompt + answer + [eos] (no bos where the tokenizer adds none), cut
to seq_length + 1, with its prompt length (bos included) stored for --prefix_lm_loss. With
--packing, whole examples are packed into samples of at most seq_length + 1 tokens
(packing.py) and each shard also stores where its examples start (``.doc.npy``), so
training isolates them.
"""
from tencentpretrain.prompts import ALPACA_TEMPLATE, build_prompt, load_template
from tencentpretrain.data.format import OFFSET_DTYPE, PROMPT_DTYPE
from tencentpretrain.data.packing import PACK_BLOCK, pack_block
from tencentpretrain.data.processors.base import (BATCH_CHARS, PROMPT_TOO_LONG, ConcatReader,
                                                  Processor, assemble_examples, text_field)


class AlpacaProcessor(Processor):
    """Samples [bos] + prompt + answer + [eos] cut to seq_length + 1, their lengths and prompt
    lengths (bos included). An example whose prompt leaves no room for one answer token is
    skipped; a longer answer is truncated (its eos then falls off too)."""
    name = "alpaca"
    noun = "examples"
    extensions = (".tokens", ".lengths", ".prompts")
    reads_text = False
    with_prompts = True
    can_pack = True

    def __init__(self, task, tokenizer):
        super().__init__(task, tokenizer)
        self.prompts, self.answers = [], []

    @classmethod
    def template(cls, prompt_template, **chat_options):
        return load_template(prompt_template) if prompt_template else ALPACA_TEMPLATE

    def add_record(self, lineno, record):
        instruction = text_field(record, "instruction", lineno)
        input_text = text_field(record, "input", lineno, optional=True)
        answer = text_field(record, "output", lineno)
        self.prompts.append(build_prompt(instruction, input_text, self.task.template))
        self.answers.append(answer)
        self.chars += len(self.prompts[-1]) + len(answer)
        if self.chars >= BATCH_CHARS:
            self.flush()

    def flush(self):
        if not self.prompts:
            return
        ids = self.tokenizer.encode_batch(self.prompts + self.answers)
        bos, eos, limit = self.tokenizer.bos_ids, self.tokenizer.eos_id, self.task.seq_length + 1
        samples, prompt_lengths = [], []
        for prompt, answer in zip(ids[:len(self.prompts)], ids[len(self.prompts):]):
            prompt = bos + prompt
            if len(prompt) >= limit:
                self.skipped[PROMPT_TOO_LONG] += 1  # bos + prompt + one answer token must fit
                self.seq_length_to_keep = max(self.seq_length_to_keep, len(prompt))
                continue
            sample = prompt + answer + [eos]
            if len(sample) > limit:
                self.truncated += 1
                del sample[limit:]
            samples.append(sample)
            prompt_lengths.append(len(prompt))
        self.write_examples(samples, prompt_lengths)
        self.prompts, self.answers, self.chars = [], [], 0

    @classmethod
    def assemble(cls, prefixes, writer, task, staging):
        """Copy the examples of all parts, in order, into shards: one per sample, or packed
        block by block (blocks of PACK_BLOCK examples in corpus order, whatever the parts)."""
        if not task.packing:
            return assemble_examples(prefixes, writer)
        tokens = ConcatReader([p + ".tokens" for p in prefixes], writer.dtype)
        all_lengths = ConcatReader([p + ".lengths" for p in prefixes], OFFSET_DTYPE)
        all_prompts = ConcatReader([p + ".prompts" for p in prefixes], PROMPT_DTYPE)
        while (lengths := all_lengths.read(PACK_BLOCK)).size:
            prompts, block = all_prompts.read(lengths.size), tokens.read(int(lengths.sum()))
            gather, sample_lengths, order, packed_lengths = pack_block(lengths, task.seq_length + 1)
            writer.add(block[gather], sample_lengths, prompts[order], packed_lengths)
        return writer.close()
