"""Attention masks by config name (``mask``).

- ``causal``: each position sees itself and earlier positions. With no padding
  and no cache this is SDPA's ``is_causal`` fast path (flash attention on GPU);
  right padding needs no mask because padded positions never reach the loss.
- ``causal_document``: causal, and a position sees only tokens of its own packed
  document (``seg`` holds the document number of each token, 0 for padding), so
  packed pre-training samples do not attend across document boundaries. Position ids
  then restart at 0 for every document (``data/packing.positions``), so each document
  sees the mask and the rotary angles it would see alone. Packed instruction samples
  (``preprocess.py --packing``) always get both, whatever the config's mask.

``isolates`` says whether a forward's examples are isolated and ``attention_mask`` decides,
for every forward, how it attends (the only place that does): ``(mask, is_causal)`` for every
layer, isolated examples by ``isolation_kind``.

With ``sliding_window`` W (Mistral) a query also sees at most the W most recent
positions, itself included, in training and in cached generation alike; while the
whole sequence fits in the window the plain causal path is kept.

A mask is a bool tensor [batch, 1, queries, keys], True where attention is allowed, or, for
packed samples, one of two forms that never build seq^2 booleans and never compute attention
between examples, so it costs the sum of squared example lengths rather than seq^2:
``DocumentSpans`` (causal SDPA per example, the default) and, on a GPU by choice, a
FlexAttention ``BlockMask`` (``document_block_mask``: blocks outside every example are skipped).
``key_mask`` [batch, keys] marks real (not left-padded) keys during generation.
Each query always sees itself, so a padded row never becomes an all-False row (NaN).
"""
import torch

from tencentpretrain.data.packing import run_starts

ISOLATION_KINDS = ("dense", "spans", "block_mask")


def _causal(batch, seq, past, device, window=None):
    query_pos = torch.arange(past, past + seq, device=device)[:, None]
    key_pos = torch.arange(past + seq, device=device)[None, :]
    allowed = key_pos <= query_pos
    if window is not None:
        allowed = allowed & (key_pos > query_pos - window)
    return allowed.expand(batch, 1, seq, past + seq)


def _finish(mask, seq, past, key_mask):
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :].bool()
        diagonal = torch.zeros_like(mask[0, 0])
        diagonal[:, past:] = torch.eye(seq, dtype=torch.bool, device=mask.device)
        mask = mask | diagonal
    return mask


def causal_mask(batch, seq, past=0, device=None, seg=None, key_mask=None, window=None):
    if window is not None and past + seq <= window:
        window = None  # nothing falls out of the window
    if past == 0 and key_mask is None and window is None:
        return None, True
    return _finish(_causal(batch, seq, past, device, window), seq, past, key_mask), False


def causal_document_mask(batch, seq, past=0, device=None, seg=None, key_mask=None, window=None):
    if seg is None:
        return causal_mask(batch, seq, past, device, key_mask=key_mask, window=window)
    if past:
        raise ValueError("causal_document masks apply to whole packed samples, not cached steps")
    same_document = seg[:, None, :, None] == seg[:, None, None, :]
    return _finish(_causal(batch, seq, 0, device, window) & same_document, seq, 0, key_mask), False


def document_block_mask(seg, window=None):
    """The ``causal_document`` pattern (and sliding window) as a FlexAttention BlockMask."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_document_causal(b, h, q, k):
        allowed = (k <= q) & (seg[b, q] == seg[b, k])
        return allowed & (k > q - window) if window is not None else allowed

    batch, seq = seg.shape
    return create_block_mask(same_document_causal, batch, None, seq, seq, device=seg.device)


class DocumentSpans:
    """Packed samples as runs of equal ``seg``: ``rows[b]`` lists (start, length) of each
    example in row b, a padding tail being one more run. Attention then runs one causal SDPA
    per run (``multi_headed_attn.span_attention``). Packers number examples 1, 2, ... in
    order, so a run is exactly one example."""

    def __init__(self, seg, window=None):
        self.rows = []
        for row in run_starts(seg).cpu():
            starts = row.nonzero().squeeze(1).tolist() + [seg.shape[1]]
            self.rows.append([(a, b - a) for a, b in zip(starts, starts[1:])])
        self.window = window
        self._window_masks = {}  # by run length: built once per batch, not once per layer

    def window_mask(self, length, device):
        """The sliding-window mask for a run longer than the window, else None (causal)."""
        if self.window is None or length <= self.window:
            return None
        if length not in self._window_masks:
            self._window_masks[length] = _causal(1, length, 0, device, self.window)
        return self._window_masks[length]


def isolates(make_mask, seg, isolate_segments=False):
    """Whether each example (run of ``seg``) attends and is positioned as if alone: packed
    batches (``isolate_segments``), and ``causal_document`` configs whenever ``seg`` is given."""
    return seg is not None and (isolate_segments or make_mask is causal_document_mask)


def isolation_kind(chosen, attention_dropout=False):
    """How isolated examples attend: ``chosen`` (one of ISOLATION_KINDS) or, None, spans on
    every device: on an H200 spans trained packed TinyLlama-shape batches at 6,398 tokens/s
    against block_mask's 1,559 (docs/benchmarks.md), and FlexAttention has no CPU backward.
    block_mask falls back to spans while attention dropout applies (FlexAttention has none)."""
    kind = chosen or "spans"
    return "spans" if kind == "block_mask" and attention_dropout else kind


def attention_mask(make_mask, batch, seq, past=0, device=None, seg=None, key_mask=None,
                   window=None, isolated=False, kind="dense"):
    """``(mask, is_causal)`` of one forward: isolated whole samples (no cache, no key mask)
    by ``kind`` (``isolation_kind``), anything else by ``make_mask`` (the config's mask), or
    ``causal_document`` when isolated."""
    if isolated and past == 0 and key_mask is None:
        if kind == "block_mask":
            return document_block_mask(seg, window), False
        if kind == "spans":
            return DocumentSpans(seg, window), False
    make_mask = causal_document_mask if isolated else make_mask
    return make_mask(batch, seq, past, device, seg=seg, key_mask=key_mask, window=window)


def fully_visible_mask(batch, seq, past=0, device=None, seg=None, key_mask=None, window=None):
    """Bidirectional (an encoder's, T5): every query sees every real key; the real keys are
    ``key_mask`` [batch, keys], else ``seg`` > 0, else all (no mask). [batch, 1, 1, keys]."""
    if key_mask is None and seg is not None:
        key_mask = seg > 0
    if key_mask is None or bool(key_mask.all()):
        return None, False
    return key_mask[:, None, None, :].bool(), False


str2mask = {"causal": causal_mask, "causal_document": causal_document_mask,
            "fully_visible": fully_visible_mask}
