"""``conversation``: multi-turn chat records rendered by a chat template, with a loss mask.

Records (JSON array or JSONL) are ShareGPT (``{"conversations": [{"from": "system" | "human" |
"gpt", "value": ...}], "system": optional}``), OpenAI (``{"messages": [{"role": "system" |
"user" | "assistant", "content": ...}]}``) or alpaca (``instruction`` + ``input`` as the user
turn, ``output`` as the answer). After an optional system turn, turns alternate user /
assistant and end with an assistant turn; other records are skipped and counted.

Each conversation is one sample (or, with --packing, packed whole as alpaca examples are),
tokenized by ``chat_templates.encode_conversation``; each token has a loss-mask byte (1: the
token is trained as a label: assistant contents and their end-of-turn tokens, or everything
with --train_on_prompt, or the last answer only with --mask_history). A conversation longer
than seq_length + 1 keeps its preamble and first pairs and drops the later pairs (never cutting a
turn); one whose first pair does not fit is skipped.
"""
from dataclasses import dataclass
from itertools import chain

import numpy as np

from tencentpretrain.chat_templates import (AlpacaTurn, ChatTemplateError, check_specials,
                                            encode_conversation, get_template)
from tencentpretrain.data.corpus import LineError
from tencentpretrain.data.format import MASK_DTYPE, OFFSET_DTYPE
from tencentpretrain.data.packing import PACK_BLOCK, pack_block
from tencentpretrain.data.processors.base import (FIRST_PAIR_TOO_LONG, ConcatReader, Processor,
                                                  iter_raw, text_field)

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}
EXAMPLES_SHOWN = 3  # record numbers listed per skip reason in the summary


@dataclass(frozen=True)
class ChatSpec:
    """What workers need: the template and the loss options (picklable, recorded in meta)."""
    template: object
    train_on_prompt: bool = False
    mask_history: bool = False

    def to_dict(self):
        return dict(self.template.to_dict(), train_on_prompt=self.train_on_prompt,
                    mask_history=self.mask_history)


class SkipRecord(Exception):
    """A record that is skipped and counted under this reason."""


def _content(turn, key, lineno):
    value = turn.get(key) if isinstance(turn, dict) else None
    if not isinstance(value, str):
        raise LineError(lineno, f'a turn without a string "{key}"')
    return value


def parse_record(record, lineno):
    """(system or None, [(user, assistant)]) of a ShareGPT / OpenAI / alpaca record."""
    if "conversations" in record or "messages" in record:
        sharegpt = "conversations" in record
        turns = record["conversations" if sharegpt else "messages"]
        if not isinstance(turns, list):
            raise LineError(lineno, f'"{"conversations" if sharegpt else "messages"}" is not an array')
        roles = []
        for turn in turns:
            role = turn.get("from" if sharegpt else "role") if isinstance(turn, dict) else None
            role = SHAREGPT_ROLES.get(role) if sharegpt else role
            if role not in ("system", "user", "assistant"):
                raise SkipRecord(f"unknown role {role!r}" if isinstance(role, str) else "a turn without a role")
            roles.append((role, _content(turn, "value" if sharegpt else "content", lineno)))
        system = record.get("system") if sharegpt else None
        if system is not None and not isinstance(system, str):
            raise LineError(lineno, '"system" is not a string')
        if roles and roles[0][0] == "system":
            system = roles.pop(0)[1]
    elif "instruction" in record:
        instruction = text_field(record, "instruction", lineno)
        input_text = text_field(record, "input", lineno, optional=True)
        roles = [("user", AlpacaTurn(instruction, input_text)),
                 ("assistant", text_field(record, "output", lineno))]
        system = text_field(record, "system", lineno, optional=True) or None
    else:
        raise LineError(lineno, 'neither "conversations", "messages" nor "instruction"')
    if not roles:
        raise SkipRecord("no turns")
    if [r for r, _ in roles] != ["user", "assistant"] * (len(roles) // 2) or len(roles) % 2:
        if roles[-1][0] != "assistant" and [r for r, _ in roles[:-1]] == ["user", "assistant"] * (len(roles) // 2):
            raise SkipRecord("does not end with an assistant turn")
        raise SkipRecord("turns do not alternate user/assistant")
    return system, [(roles[i][1], roles[i + 1][1]) for i in range(0, len(roles), 2)]


class ConversationProcessor(Processor):
    name = "conversation"
    noun = "conversations"
    extensions = (".tokens", ".lengths", ".mask")
    reads_text = False
    with_prompts = False
    with_mask = True
    can_pack = True

    def __init__(self, task, tokenizer):
        super().__init__(task, tokenizer)
        self.spec = task.template
        self.dropped_pairs = 0
        self.skipped_at = {}  # reason -> first record line numbers (within this range)
        self.samples, self.masks = [], []

    @classmethod
    def template(cls, prompt_template, chat_template=None, tokenizer=None, train_on_prompt=False,
                 mask_history=False):
        template = get_template(chat_template or "alpaca", getattr(tokenizer, "tokenizer_path", None))
        if tokenizer is not None:
            check_specials(template, tokenizer)
        return ChatSpec(template, train_on_prompt, mask_history)

    def _skip(self, reason, lineno):
        self.skipped[reason] += 1
        seen = self.skipped_at.setdefault(reason, [])
        if len(seen) < EXAMPLES_SHOWN:
            seen.append(lineno)

    def add_record(self, lineno, record):
        template = self.spec.template
        try:
            system, pairs = parse_record(record, lineno)
            if system is not None and not template.system:
                raise SkipRecord(f"--chat_template {template.name} takes no system prompt")
            if template.name == "alpaca" and len(pairs) > 1:
                raise SkipRecord("--chat_template alpaca takes one turn")
        except SkipRecord as e:
            self._skip(str(e), lineno)
            return
        try:
            ids, trained, ends = encode_conversation(template, self.tokenizer, system, pairs)
        except ChatTemplateError as e:  # the Jinja template's raise_exception
            self._skip(str(e), lineno)
            return
        limit = self.task.seq_length + 1
        if ends[1] > limit:
            self._skip(FIRST_PAIR_TOO_LONG, lineno)
            self.seq_length_to_keep = max(self.seq_length_to_keep, ends[1] - 1)
            return
        keep = max(k for k in range(1, len(ends)) if ends[k] <= limit)
        if keep < len(pairs):
            self.truncated += 1
            self.dropped_pairs += len(pairs) - keep
        ids, trained = ids[:ends[keep]], trained[:ends[keep]]
        if self.spec.train_on_prompt:
            trained = [True] * len(ids)
        elif self.spec.mask_history:
            trained = [False] * ends[keep - 1] + trained[ends[keep - 1]:]
        self.samples.append(ids)
        self.masks.append(trained)
        self.chars += len(ids) * 4
        if self.chars >= 1 << 20:
            self.flush()

    def flush(self):
        if not self.samples:
            return
        lengths = np.fromiter(map(len, self.samples), OFFSET_DTYPE, len(self.samples))
        self.write(".tokens", np.fromiter(chain.from_iterable(self.samples), self.dtype, lengths.sum()))
        self.write(".mask", np.fromiter(chain.from_iterable(self.masks), MASK_DTYPE, lengths.sum()))
        self.write(".lengths", lengths)
        self.documents += len(self.samples)
        self.tokens += int(lengths.sum())
        self.samples, self.masks, self.chars = [], [], 0

    def finish(self):
        counts = super().finish()
        from tencentpretrain.data.builder import lines_before  # the line numbers within the whole file
        offset = lines_before(self.task.corpus_path, self.task.start) if self.task.start else 0
        counts["skipped_at"] = {why: [offset + n for n in lines] for why, lines in self.skipped_at.items()}
        counts["dropped_pairs"] = self.dropped_pairs
        return counts

    @classmethod
    def assemble(cls, prefixes, writer, task, staging):
        """As alpaca's: one conversation per sample, or packed block by block; the mask bytes
        travel with their tokens."""
        tokens = ConcatReader([p + ".tokens" for p in prefixes], writer.dtype)
        masks = ConcatReader([p + ".mask" for p in prefixes], MASK_DTYPE)
        if not task.packing:
            for prefix in prefixes:
                for lengths in iter_raw(prefix + ".lengths", OFFSET_DTYPE):
                    n = int(lengths.sum())
                    writer.add(tokens.read(n), lengths, mask=masks.read(n))
            return writer.close()
        all_lengths = ConcatReader([p + ".lengths" for p in prefixes], OFFSET_DTYPE)
        while (lengths := all_lengths.read(PACK_BLOCK)).size:
            n = int(lengths.sum())
            block, mask = tokens.read(n), masks.read(n)
            gather, sample_lengths, _, packed_lengths = pack_block(lengths, task.seq_length + 1)
            writer.add(block[gather], sample_lengths, None, packed_lengths, mask=mask[gather])
        return writer.close()
