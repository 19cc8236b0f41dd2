"""Encoder-decoder generation (T5): the encoder runs once per batch of sources, the decoder
one position per step with a KV cache (self-attention keys/values grow by one position,
cross-attention keys/values are computed from the encoder's output once).

Sources of different lengths are right-padded; the padding is hidden from the encoder and
from cross-attention by a key mask. Every row's decoder starts from the same start token
(T5: pad), so the decoder needs no padding. Rows that finish are dropped from the batch,
the encoder output and the cache. Sampling is ``generation.next_tokens``'s.
"""
import torch

from tencentpretrain.generation import (GenerationError, SamplingOptions, keep_tokens,
                                        next_tokens, stop_set)


def right_pad(prompts, pad_id, device):
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    key_mask = torch.zeros((len(prompts), width), dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        key_mask[row, :len(prompt)] = True
    return ids.to(device), key_mask.to(device)


@torch.no_grad()
def generate_seq2seq(model, sources, max_new_tokens, eos_id=None, pad_id=0,
                     decoder_start_id=None, options=None, generator=None, on_token=None,
                     use_cache=True, vocab_size=None):
    """New target ids for each source (a list of id lists), the stop token not included.
    ``decoder_start_id`` defaults to ``pad_id`` (T5). ``use_cache=False`` reruns the
    decoder over the whole target at every step (tests, benchmarks)."""
    options = (options or SamplingOptions()).check()
    if model.decoder is None:
        raise GenerationError(f"{model.config.source} has no decoder; use generate_lm.py")
    if not sources or any(len(s) == 0 for s in sources):
        raise GenerationError("every source needs at least one token")
    stops = stop_set(eos_id)
    start = pad_id if decoder_start_id is None else decoder_start_id
    device = next(model.parameters()).device
    vocab_size = vocab_size or model.vocab_size
    outputs = [[] for _ in sources]
    if max_new_tokens <= 0:
        return outputs
    src, src_mask = right_pad(sources, pad_id, device)
    memory = model.encode(src, key_mask=src_mask)
    batch = len(sources)
    active = torch.arange(batch, device=device)
    tgt = torch.full((batch, 1), start, dtype=torch.long, device=device)
    seen = torch.zeros((batch, vocab_size), dtype=torch.bool, device=device)
    stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=device)
    cache = None
    if use_cache:
        cache = model.decoder.new_cache(batch, max_new_tokens, memory.dtype, device)
    step = tgt
    for produced in range(1, max_new_tokens + 1):
        logits = model.decode(memory, step if use_cache else tgt, key_mask=src_mask,
                              kv_cache=cache)
        token = next_tokens(logits[:, -1, :vocab_size], seen, options, generator)
        at_limit = torch.full_like(token, produced == max_new_tokens, dtype=torch.bool)
        finished = keep_tokens(outputs, active, token, at_limit, stops, stop_ids, on_token)
        if bool(finished.all()):
            break
        if bool(finished.any()):
            keep = (~finished).nonzero().squeeze(-1)
            active, token, memory, src_mask, tgt, seen = (
                t[keep] for t in (active, token, memory, src_mask, tgt, seen))
            if cache is not None:
                cache.reorder(keep)
        seen[torch.arange(len(token), device=device), token] = True
        step = token[:, None]
        tgt = torch.cat([tgt, step], dim=1)
    return outputs
