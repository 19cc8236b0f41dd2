"""Log-probabilities of answer continuations, with the shared prefix computed once.

A choice's score is log P(continuation | prompt), summed over the continuation's tokens.
Those tokens are the ones encoding prompt + continuation together gives beyond what it
shares with the prompt's own encoding, so the letter is scored as the shots wrote it,
whichever tokenizer (where the tokenizer merges across the boundary, the merged token is
the one scored, after the shared part). When every continuation is one token after the
whole prompt, one row scores all four choices; otherwise each choice gets its row.

The k shots are the same for every question of a subject: the keys and values of that
prefix are computed once (``SharedPrefix``) and each batch runs only the question tokens
over them. The tokens are always exactly those of encoding the whole text: a question whose
encoding does not start with the prefix's own (the tokenizer merged across the boundary) is
scored by a full forward instead, as is everything with ``use_cache=False``.
"""
import os
from dataclasses import dataclass

import torch

from tencentpretrain.layers.kv_cache import KVCache
from tencentpretrain.models import layout


@dataclass
class Row:
    """Input tokens from position 0 and the choices read from them: (choice, position
    whose logits predict the first target, target ids)."""
    ids: list
    scored: list


def common_length(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


@dataclass
class EncodedQuestion:
    prefix_ids: list  # bos + the shared prefix, what a cache may hold
    prompt_ids: list  # bos + prefix + question
    wholes: list  # per choice: bos + prefix + question + continuation, encoded together

    @property
    def length(self):
        """Tokens of the longest prompt + answer: what must fit the model."""
        return max(len(w) for w in self.wholes)

    def rows(self):
        prompt = self.prompt_ids
        shared = [common_length(whole, prompt) for whole in self.wholes]
        if all(c == len(prompt) and len(w) == c + 1 for c, w in zip(shared, self.wholes)):
            return [Row(prompt, [(i, len(prompt) - 1, [w[-1]]) for i, w in enumerate(self.wholes)])]
        return [Row(w[:-1], [(i, c - 1, w[c:])])
                for i, (c, w) in enumerate(zip(shared, self.wholes))]

    def cached_rows(self):
        """The rows, or None where the prefix cache cannot serve them (a merge across the
        prefix boundary, or a target inside the prefix)."""
        n = len(self.prefix_ids)
        rows = self.rows()
        if n and all(r.ids[:n] == self.prefix_ids and len(r.ids) > n
                     and all(start >= n for _, start, _ in r.scored) for r in rows):
            return rows
        return None


def encode_questions(tokenizer, items, continuation_texts):
    """An EncodedQuestion per (prefix ids, prompt text) of ``items``: one batched call of the
    tokenizer on every core (the prompt and prompt + each continuation, all encoded whole),
    which on a GPU would otherwise take longer than the forward passes."""
    texts = [t for _, prompt in items for t in [prompt] + [prompt + c for c in continuation_texts]]
    ids = tokenizer.encode_batch(texts, num_threads=os.cpu_count() or 1)
    bos, k = tokenizer.bos_ids, 1 + len(continuation_texts)
    return [EncodedQuestion(prefix_ids, bos + ids[i * k],
                            [bos + x for x in ids[i * k + 1:(i + 1) * k]])
            for i, (prefix_ids, _) in enumerate(items)]


def encode_question(tokenizer, prefix_ids, prompt_text, continuation_texts):
    return encode_questions(tokenizer, [(prefix_ids, prompt_text)], continuation_texts)[0]


class SharedPrefix:
    """Keys and values of one prefix (batch 1), computed once and read by every batch."""

    def __init__(self, model, prefix_ids):
        c, param = model.config, next(model.parameters())
        cache = KVCache(c.layers_num, 1, c.kv_heads_num, c.head_dim, len(prefix_ids),
                        param.dtype, param.device)
        model.hidden_states(torch.tensor([prefix_ids], device=param.device), kv_cache=cache)
        self.keys, self.values, self.length = cache.keys, cache.values, len(prefix_ids)

    def view(self, batch):
        return _PrefixView(self, batch)


class _PrefixView:
    """The KVCache interface the attention layers call, for one forward of ``batch`` rows
    after the prefix: each layer sees the prefix's keys/values followed by its own."""

    def __init__(self, prefix, batch):
        self.prefix, self.batch, self.length = prefix, batch, prefix.length

    def update(self, layer, k, v):
        shape = (self.batch, -1, -1, -1)
        return (torch.cat([self.prefix.keys[layer].expand(shape), k], dim=2),
                torch.cat([self.prefix.values[layer].expand(shape), v], dim=2))

    def advance(self, steps):
        pass  # one forward per view: the prefix stays as it is for the next batch


class ChoiceScorer:
    """Scores of every choice of many questions; ``batch_size`` rows per forward."""

    def __init__(self, model, batch_size=8, use_cache=True):
        self.model, self.batch_size, self.use_cache = model, batch_size, use_cache
        self.device = next(model.parameters()).device

    @torch.inference_mode()
    def score(self, questions, on_done=None):
        """A list of choice log-probabilities per EncodedQuestion; ``on_done(n)`` after each
        batch with the number of questions it completed."""
        groups = {}  # prefix ids (() = full forward) -> [(question index, Row)]
        rows_left = [0] * len(questions)
        for index, question in enumerate(questions):
            rows = question.cached_rows() if self.use_cache else None
            key = tuple(question.prefix_ids) if rows is not None else ()
            for row in rows if rows is not None else question.rows():
                groups.setdefault(key, []).append((index, row))
                rows_left[index] += 1
        scores = [[None] * len(q.wholes) for q in questions]
        for key, items in groups.items():
            prefix = SharedPrefix(self.model, list(key)) if key else None
            items.sort(key=lambda item: -len(item[1].ids))  # similar lengths share a batch
            for start in range(0, len(items), self.batch_size):
                batch = items[start:start + self.batch_size]
                values = self._forward(prefix, [row for _, row in batch])
                for (index, row), row_values in zip(batch, values):
                    for (choice, _, _), value in zip(row.scored, row_values):
                        scores[index][choice] = value
                    rows_left[index] -= 1
                if on_done is not None:
                    on_done(len({index for index, _ in batch if rows_left[index] == 0}))
        return scores

    def _forward(self, prefix, rows):
        """Per row, the summed log-probability of each scored target list."""
        skip = prefix.length if prefix is not None else 0
        width = max(len(r.ids) for r in rows) - skip
        ids = torch.zeros((len(rows), width), dtype=torch.long)  # right padding: never seen
        for b, row in enumerate(rows):
            ids[b, :len(row.ids) - skip] = torch.tensor(row.ids[skip:])
        cache = prefix.view(len(rows)) if prefix is not None else None
        hidden = self.model.hidden_states(ids.to(self.device), kv_cache=cache)
        where, targets, owners = [], [], []
        for b, row in enumerate(rows):
            for n, (_, start, target) in enumerate(row.scored):
                for t, token in enumerate(target):
                    where.append((b, start - skip + t))
                    targets.append(token)
                    owners.append((b, n))
        b_index, p_index = (torch.tensor(x, device=self.device) for x in zip(*where))
        logits = layout.output_layer(self.model)(hidden[b_index, p_index]).float()
        rows_index = torch.arange(len(targets), device=self.device)
        picked = logits.log_softmax(dim=-1)[rows_index, torch.tensor(targets, device=self.device)]
        picked = picked.tolist()
        sums = [[0.0] * len(row.scored) for row in rows]
        for (b, n), value in zip(owners, picked):
            sums[b][n] += value
        return sums

