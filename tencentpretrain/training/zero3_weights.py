"""Weights in and out of a model that ZeRO-3 may partition: the only module that gathers or
scatters parameters (one at a time, or one top-level block at a time), so no rank ever holds
the whole model or checkpoint. The resumable training state is train_state.py's; the save
layout (tags, ``latest``, pruning) checkpointing.py's.
"""
import contextlib

import torch

from tencentpretrain.model_builder import build_model, check_state_dict, vocab_size_of
from tencentpretrain.models import layout
from tencentpretrain.utils.weights import LazyWeights, save_state_dict_file


def _gathered(param, zero3, modifier_rank):
    """Under ZeRO-3 the full tensor exists only inside this context (on every rank)."""
    if not zero3:
        return contextlib.nullcontext()
    import deepspeed
    return deepspeed.zero.GatheredParameters([param], modifier_rank=modifier_rank)


def _unique_parameters(model):
    return list(model.named_parameters())  # tied weights appear once


def open_pretrained(path, config):
    """Check a pretrained file against the config (shapes only); returns (weights, vocab)."""
    weights = LazyWeights(path)
    meta = weights.meta_state_dict()
    vocab = vocab_size_of(meta, path)
    check_state_dict(build_model(config, vocab, device="meta"), meta, path)
    return weights, vocab


@torch.no_grad()
def load_weights(model, weights, zero3, rank, names=None):
    """Copy ``weights`` (LazyWeights or a state dict) into ``model`` (only ``names`` if
    given); under ZeRO-3 rank 0 reads each tensor and DeepSpeed scatters it to the
    partitions, so no rank holds the checkpoint."""
    for name, param in _unique_parameters(model):
        if names is not None and name not in names:
            continue
        with _gathered(param, zero3, modifier_rank=0):
            if rank == 0 or not zero3:
                param.data.copy_(weights[name])


@torch.no_grad()
def init_weights(model, zero3, rank, std=0.02):
    """Training from scratch. Under ZeRO-3 each top-level block (embedding, one layer,
    the head) is gathered and initialised on rank 0 in turn, never the whole model."""
    if not zero3:
        model.init_weights(std)
        return
    import deepspeed
    for block in layout.blocks(model):
        with deepspeed.zero.GatheredParameters(list(block.parameters()), modifier_rank=0):
            if rank == 0:
                type(model).init_weights(block, std, model.config)  # the model's rule, one block


@torch.no_grad()
def consolidated_state_dict(model, zero3, rank, names=None):
    """The full weights (only ``names`` if given) on rank 0, None elsewhere, in the
    training precision."""
    state = {} if rank == 0 else None
    for name, param in _unique_parameters(model):
        if names is not None and name not in names:
            continue
        with _gathered(param, zero3, modifier_rank=None):
            if rank == 0:
                state[name] = param.detach().to("cpu", copy=True)
    return state


def save_weights(model, path, zero3, rank):
    state = consolidated_state_dict(model, zero3, rank)
    if rank == 0:
        save_state_dict_file(state, path)
