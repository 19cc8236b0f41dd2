"""Source/target samples for encoder-decoder models (T5): span corruption and batches.

A seq2seq dataset (meta.json ``"holds": {"seq2seq": true, "prompt_lengths": true}``) stores
each sample as source tokens then target tokens; the prompt length is the source's. A batch
(``collate_seq2seq``): ``input_ids`` the sources right-padded, ``seg`` 1 on real source
tokens (the encoder's key mask), ``tgt_ids`` the target shifted right behind the decoder
start token (pad, as T5), ``labels`` the target, ``loss_mask`` its real tokens.

Span corruption (T5 paper, Hugging Face's ``run_t5_mlm_flax.py``): ``noise_density`` of a
chunk's tokens are masked in spans of mean length ``mean_noise_span_length``; each span is
one sentinel in the source, and the target is each sentinel followed by the span it hides,
then eos. Sentinel i is ``<extra_id_i>`` (in T5's vocabulary the ids count down from the
last). Each chunk's mask is drawn from numpy's Generator seeded with (seed, chunk number), so
it depends on neither the process count nor anything but the chunk.
"""
import numpy as np


def split_lengths(tokens_length, noise_density, mean_noise_span_length):
    """(source length, target length) after corrupting ``tokens_length`` tokens (eos each)."""
    noise = int(round(tokens_length * noise_density))
    spans = int(round(noise / mean_noise_span_length))
    return tokens_length - noise + spans + 1, noise + spans + 1


def raw_length(seq_length, noise_density, mean_noise_span_length):
    """The most raw tokens whose corrupted source fits ``seq_length`` tokens (HF's
    ``compute_input_and_target_lengths``)."""
    length = seq_length
    while split_lengths(length + 1, noise_density, mean_noise_span_length)[0] <= seq_length:
        length += 1
    return length


def _random_segmentation(num_items, num_segments, rng):
    """``num_items`` split into ``num_segments`` non-empty runs, uniformly at random."""
    first = np.arange(num_items - 1) < (num_segments - 1)
    rng.shuffle(first)
    segment_id = np.cumsum(np.pad(first, [[1, 0]]))
    return np.bincount(segment_id, minlength=num_segments)


def max_spans(length, noise_density, mean_noise_span_length):
    """Masked spans (= sentinels) in a chunk of ``length`` tokens (``noise_mask``'s count)."""
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    return max(int(round(min(noise, length - noise) / mean_noise_span_length)), 1)


def noise_mask(length, noise_density, mean_noise_span_length, rng):
    """bool [length]: True on masked tokens, in spans alternating with kept runs (the
    sequence starts with a kept run), as T5's ``random_spans_noise_mask``."""
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = max_spans(length, noise_density, mean_noise_span_length)
    noise_lengths = _random_segmentation(noise, spans, rng)
    kept_lengths = _random_segmentation(length - noise, spans, rng)
    interleaved = np.stack([kept_lengths, noise_lengths], axis=1).reshape(-1)
    starts = np.cumsum(interleaved)[:-1]
    indicator = np.zeros(length, np.int8)
    indicator[starts] = 1
    return np.cumsum(indicator) % 2 == 1


def corrupt(tokens, mask, sentinels, eos_id):
    """(source, target) of ``tokens`` under ``mask``: each masked span -> its sentinel in the
    source; the target is each span's sentinel then its tokens; both end with eos."""
    tokens = np.asarray(tokens, np.int64)
    span_start = mask & ~np.pad(mask, [[1, 0]])[:-1]
    spans = int(span_start.sum())
    sentinel_ids = np.asarray(sentinels[:spans], np.int64)
    source = tokens.copy()
    source[span_start] = sentinel_ids
    source = source[~mask | span_start]
    target = np.insert(tokens[mask], (np.cumsum(mask) - 1)[span_start], sentinel_ids)
    return np.append(source, eos_id), np.append(target, eos_id)


def collate_seq2seq(samples, pad_id):
    """A training batch of source/target samples (module docstring)."""
    import torch

    sources = [s.tokens[:s.prompt_length] for s in samples]
    targets = [s.tokens[s.prompt_length:] for s in samples]
    src_width = max(max(len(s) for s in sources), 1)
    tgt_width = max(max(len(t) for t in targets), 1)
    input_ids = np.full((len(samples), src_width), pad_id, np.int64)
    seg = np.zeros((len(samples), src_width), np.int64)
    tgt_ids = np.full((len(samples), tgt_width), pad_id, np.int64)
    labels = np.full((len(samples), tgt_width), pad_id, np.int64)
    loss_mask = np.zeros((len(samples), tgt_width), bool)
    for row, (source, target) in enumerate(zip(sources, targets)):
        input_ids[row, :len(source)] = source
        seg[row, :len(source)] = 1
        labels[row, :len(target)] = target
        loss_mask[row, :len(target)] = True
        tgt_ids[row, 1:len(target)] = target[:-1]  # tgt_ids[row, 0]: pad, the decoder start
    return {name: torch.from_numpy(array) for name, array in
            (("input_ids", input_ids), ("labels", labels), ("loss_mask", loss_mask),
             ("seg", seg), ("tgt_ids", tgt_ids))}
