"""Text generation: sampling filters and a batched, KV-cached decoding loop.

Prompts of different lengths are left-padded into one batch: ``key_mask`` hides
the padding from attention and ``position_ids`` count only real tokens, so each
row decodes exactly as it would alone. With the KV cache a new token costs one
position of compute; rows that finish (EOS or their length limit) are dropped
from the batch and the cache, so the others do not keep paying for them.
"""
from dataclasses import dataclass

import torch

from tencentpretrain.errors import UserError
from tencentpretrain.layers.kv_cache import KVCache
from tencentpretrain.prompts import build_prompt


class GenerationError(UserError):
    """Sampling options or prompts that cannot be generated from; one line."""


@dataclass
class SamplingOptions:
    top_k: int = 0  # 0: no top-k filter; 1: greedy
    top_p: float = 1.0  # 1.0 (or 0, as in TencentPretrain): no nucleus filter
    temperature: float = 1.0  # 0: greedy
    repetition_penalty: float = 1.0  # 1.0: none

    @property
    def greedy(self):
        return self.top_k == 1 or self.temperature == 0

    def check(self):
        if self.top_k < 0:
            raise GenerationError(f"--top_k must be >= 0, got {self.top_k}")
        if not 0.0 <= self.top_p <= 1.0:
            raise GenerationError(f"--top_p must be in [0, 1], got {self.top_p}")
        if self.temperature < 0:
            raise GenerationError(f"--temperature must be >= 0, got {self.temperature}")
        if self.repetition_penalty <= 0:
            raise GenerationError(
                f"--repetition_penalty must be > 0, got {self.repetition_penalty}")
        return self


def apply_repetition_penalty(logits, seen, penalty):
    """CTRL's penalty, as transformers applies it: logits of tokens already in the
    sequence are divided by ``penalty`` when positive and multiplied when negative,
    so they get less likely either way. ``seen``: bool [batch, vocab]."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def filter_top_k_top_p(logits, top_k=0, top_p=1.0):
    """Set to -inf every logit outside the ``top_k`` best and outside the smallest
    set of best tokens whose probability mass reaches ``top_p``."""
    if top_k > 0:
        kth_best = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth_best, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        beyond = probs.cumsum(dim=-1) - probs >= top_p  # mass before this token already enough
        logits = logits.masked_fill(beyond.scatter(-1, order, beyond), float("-inf"))
    return logits


def next_tokens(logits, seen, options, generator=None):
    """One token id per row from the last position's logits [batch, vocab]."""
    logits = apply_repetition_penalty(logits.float(), seen, options.repetition_penalty)
    if options.greedy:
        return logits.argmax(dim=-1)
    logits = filter_top_k_top_p(logits / options.temperature, options.top_k, options.top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(prompts, pad_id, device):
    """ids [batch, longest] with prompts right-aligned, and key_mask (True = real token)."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    key_mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        if prompt:
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            key_mask[row, width - len(prompt):] = True
    return ids.to(device), key_mask.to(device)


def keep_tokens(outputs, active, token, finished, stops, stop_ids, on_token=None):
    """One decoding step's bookkeeping: each batch row's ``token`` is appended to the output of
    its prompt (``active``: the prompt index of each row) and streamed to ``on_token``, unless
    it is a stop token, which ends the row instead. Returns ``finished`` (rows at their length
    limit) with the stopped rows added."""
    if stops:
        finished = finished | torch.isin(token, stop_ids)
    for row, tok in zip(active.tolist(), token.tolist()):
        if tok not in stops:
            outputs[row].append(tok)
            if on_token is not None:
                on_token(row, tok)
    return finished


def stop_set(eos_id):
    """The stop ids of ``eos_id``: None, one id, or a list of ids (as ``eos_token_id`` of a
    generation_config.json: eos and a chat template's end-of-turn token)."""
    if eos_id is None:
        return frozenset()
    if isinstance(eos_id, int):
        return frozenset([eos_id])
    return frozenset(int(i) for i in eos_id if i is not None)


@torch.no_grad()
def generate(model, prompts, max_new_tokens, max_length=None, eos_id=None, pad_id=0,
             options=None, generator=None, on_token=None, use_cache=True, vocab_size=None):
    """New token ids for each prompt (a list of id lists), the stop token not included.

    Only ids below ``vocab_size`` (the tokenizer's; default the model's) are produced: rows
    beyond it are padding (scripts/extend_vocab.py --pad_to_multiple_of).

    A row stops at ``eos_id`` (one id, or a list of stop ids), after ``max_new_tokens``
    tokens, or when prompt plus continuation reach ``max_length``. ``on_token(row, token_id)`` is called for every
    kept token as it is produced (streaming). ``use_cache=False`` recomputes the whole
    sequence at every step, as TencentPretrain does (for benchmarks and tests).
    """
    options = (options or SamplingOptions()).check()
    stops = stop_set(eos_id)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenerationError("every prompt needs at least one token (e.g. BOS)")
    limits = [max_new_tokens if max_length is None else min(max_new_tokens, max_length - len(p))
              for p in prompts]
    outputs = [[] for _ in prompts]
    rows = [row for row, limit in enumerate(limits) if limit > 0]
    if not rows:
        return outputs
    device = next(model.parameters()).device
    ids, key_mask = left_pad([prompts[row] for row in rows], pad_id, device)
    positions = (key_mask.long().cumsum(dim=1) - 1).clamp(min=0)
    padded = not bool(key_mask.all())  # no mask at all lets SDPA take its causal fast path
    vocab_size = vocab_size or model.vocab_size
    seen = torch.zeros((len(rows), vocab_size), dtype=torch.bool, device=device)
    seen.scatter_(1, torch.where(key_mask, ids, ids[:, -1:]), True)  # padding: a real id

    active = torch.tensor(rows, device=device)  # original prompt index of each batch row
    steps_left = torch.tensor([limits[row] for row in rows], device=device)
    stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=device)
    cache = None
    if use_cache:
        c = model.config
        dtype = next(model.parameters()).dtype
        cache = KVCache(c.layers_num, len(rows), c.kv_heads_num, c.head_dim,
                        ids.shape[1] + int(steps_left.max()), dtype, device)
    step_ids, step_positions = ids, positions
    while True:
        if use_cache:
            logits = model(step_ids, position_ids=step_positions,
                           key_mask=key_mask if padded else None, kv_cache=cache)
        else:
            logits = model(ids, position_ids=positions, key_mask=key_mask if padded else None)
        token = next_tokens(logits[:, -1, :vocab_size], seen, options, generator)
        steps_left -= 1
        finished = keep_tokens(outputs, active, token, steps_left == 0, stops, stop_ids, on_token)
        if bool(finished.all()):
            return outputs
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(-1)
            active, token, steps_left = active[keep], token[keep], steps_left[keep]
            ids, positions, key_mask, seen = (t[keep] for t in (ids, positions, key_mask, seen))
            if cache is not None:
                cache.reorder(keep)
        seen[torch.arange(len(token), device=device), token] = True
        step_ids, step_positions = token[:, None], positions[:, -1:] + 1
        ids = torch.cat([ids, step_ids], dim=1)
        positions = torch.cat([positions, step_positions], dim=1)
        key_mask = torch.cat([key_mask, key_mask.new_ones((len(token), 1))], dim=1)


class TextGenerator:
    """Text in, text out: template, BOS, length checks, decoding of the new tokens only."""

    def __init__(self, model, tokenizer, seq_length=None, max_new_tokens=None, options=None,
                 template=None, seed=None, stop_ids=None):
        self.model, self.tokenizer, self.template = model, tokenizer, template
        # ids ending an answer: eos, and a chat template's end-of-turn token (chat.py)
        self.stop_ids = list(stop_ids) if stop_ids else [tokenizer.eos_id]
        self.chat = None  # a chat.ChatSession: prompts are rendered as one user turn
        self.seq_length = seq_length or model.config.max_seq_length
        self.max_new_tokens = max_new_tokens or self.seq_length
        self.options = (options or SamplingOptions()).check()
        device = next(model.parameters()).device
        self.generator = torch.Generator(device=device)
        if seed is not None:
            self.generator.manual_seed(seed)

    def encode(self, text, where="prompt"):
        """BOS (where the tokenizer adds one) + the (templated) text, as the alpaca data
        processor tokenizes prompts; with a chat session, the text as one user turn after its
        system prompt, with the generation prompt (as the conversation processor renders it)."""
        if self.chat is not None:
            return self.check_length(self.chat.render(text), where)
        if self.template is not None:
            text = build_prompt(text, template=self.template)
        return self.check_length(self.tokenizer.bos_ids + self.tokenizer.encode(text), where)

    def check_length(self, ids, where="prompt"):
        if not ids:
            raise GenerationError(f"{where}: empty, and the tokenizer adds no bos: there is "
                                  f"nothing to continue from")
        if len(ids) >= self.seq_length:
            raise GenerationError(f"{where}: the prompt has {len(ids)} tokens, no room for new "
                                  f"tokens under --seq_length {self.seq_length} (it needs "
                                  f"--seq_length {len(ids) + 1} or more)")
        return ids

    def complete_ids(self, prompt_ids, on_token=None):
        """New ids for each prompt, up to a stop id (not included) or the length limits."""
        return generate(self.model, prompt_ids, self.max_new_tokens, self.seq_length,
                        eos_id=self.stop_ids, pad_id=self.tokenizer.pad_id,
                        options=self.options, generator=self.generator, on_token=on_token,
                        vocab_size=self.tokenizer.vocab_size)

    def complete(self, prompt_ids, on_token=None):
        return [self.tokenizer.decode(ids) for ids in self.complete_ids(prompt_ids, on_token)]
