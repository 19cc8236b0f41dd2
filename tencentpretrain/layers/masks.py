"""Attention masks by config name (``mask``).

- ``causal``: each position sees itself and earlier positions. With no padding
  and no cache this is SDPA's ``is_causal`` fast path (flash attention on GPU);
  right padding needs no mask because padded positions never reach the loss.
- ``causal_document``: causal, and a position sees only tokens of its own packed
  document (``seg`` holds the document number of each token, 0 for padding), so
  packed pre-training samples do not attend across document boundaries. Position ids
  then restart at 0 for every document (``document_positions``), so each document
  sees the mask and the rotary angles it would see alone. Packed instruction samples
  (``preprocess.py --packing``) always get both, whatever the config's mask.

With ``sliding_window`` W (Mistral) a query also sees at most the W most recent
positions, itself included, in training and in cached generation alike; while the
whole sequence fits in the window the plain causal path is kept.

A mask is a bool tensor [batch, 1, queries, keys], True where attention is allowed, or, for
packed samples, one of two forms that never build seq^2 booleans and never compute attention
between examples, so it costs the sum of squared example lengths rather than seq^2:
``DocumentSpans`` (CPU: causal SDPA per example) and, on a GPU, a FlexAttention ``BlockMask``
(``document_block_mask``: block indices; blocks outside every example are skipped).
``key_mask`` [batch, keys] marks real (not left-padded) keys during generation.
Each query always sees itself, so a padded row never becomes an all-False row (NaN).
"""
import torch


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


def run_starts(seg):
    """True where a run of equal ``seg`` begins (a new document or example; a run of padding
    counts as one): the first position, and wherever ``seg`` changes."""
    opens = torch.ones_like(seg, dtype=torch.bool)
    opens[..., 1:] = seg[..., 1:] != seg[..., :-1]
    return opens


def document_positions(seg):
    """Position ids [batch, seq] that restart at 0 at every ``run_starts``."""
    index = torch.arange(seg.shape[-1], device=seg.device).expand_as(seg)
    return index - torch.where(run_starts(seg), index, 0).cummax(-1).values


str2mask = {"causal": causal_mask, "causal_document": causal_document_mask}
