"""Stack of transformer layers (``"encoder": "transformer"``).

Builds the attention mask and rotary angles once per forward and hands them to
every layer. Activation checkpointing wraps groups of layers so their
activations are recomputed in backward instead of kept.
"""
import torch
import torch.nn as nn

from tencentpretrain.encoders.base import Encoder
from tencentpretrain.layers import str2layernorm
from tencentpretrain.layers.masks import (DocumentSpans, causal_document_mask,
                                          document_block_mask, document_positions, str2mask)
from tencentpretrain.layers.rotary import rotary_rotations
from tencentpretrain.layers.transformer import TransformerLayer


class TransformerEncoder(Encoder):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.make_mask = str2mask[config.mask]
        self.transformer = nn.ModuleList(
            [TransformerLayer(config, i) for i in range(config.layers_num)])
        self.layer_norm = None
        if config.layernorm_positioning == "pre":
            self.layer_norm = str2layernorm[config.layernorm](config.hidden_size,
                                                              eps=config.layernorm_eps)
        # how packed samples are isolated: "block_mask" (FlexAttention), "spans" (causal SDPA
        # per example), "dense" (a boolean [seq, seq] mask), or None: by device, block_mask on
        # CUDA, spans elsewhere (FlexAttention has no CPU backward)
        self.isolation = None

    def layers(self):
        return self.transformer

    def final_norm(self):
        return self.layer_norm

    def isolation_kind(self, hidden):
        kind = self.isolation or ("block_mask" if hidden.is_cuda else "spans")
        if kind == "block_mask" and self.config.dropout and self.training:
            return "spans"  # FlexAttention has no attention dropout
        return kind

    def forward(self, hidden, seg=None, position_ids=None, key_mask=None, kv_cache=None,
                isolate_segments=False):
        """isolate_segments (packed examples): attention and positions per ``seg``, whatever
        the config's mask; ``causal_document`` configs isolate whenever ``seg`` is given."""
        batch, seq, _ = hidden.shape
        past = kv_cache.length if kv_cache is not None else 0
        isolated = seg is not None and (isolate_segments or self.make_mask is causal_document_mask)
        if position_ids is None and isolated:
            position_ids = document_positions(seg)
        elif position_ids is None:
            position_ids = torch.arange(past, past + seq, device=hidden.device).expand(batch, seq)
        rotary = None
        if self.config.rotary_position_embedding:
            rotary = rotary_rotations(position_ids, self.config.head_dim, self.config.rope_theta,
                                      hidden.device, self.config.rope_scaling)
        kind = self.isolation_kind(hidden) if isolated and past == 0 and key_mask is None else "dense"
        if kind == "block_mask":
            attn_mask, is_causal = document_block_mask(seg, self.config.sliding_window), False
        elif kind == "spans":
            attn_mask, is_causal = DocumentSpans(seg, self.config.sliding_window), False
        else:
            make_mask = causal_document_mask if isolated else self.make_mask
            attn_mask, is_causal = make_mask(batch, seq, past, hidden.device, seg=seg,
                                             key_mask=key_mask, window=self.config.sliding_window)

        layers = list(self.transformer)
        if self.checkpointing():
            group = self.checkpoint_layers_num
            for start in range(0, len(layers), group):
                def run(x, chunk=layers[start:start + group]):
                    for layer in chunk:
                        x = layer(x, rotary, attn_mask, is_causal)
                    return x
                hidden = self.checkpoint_fn(run, hidden)
        else:
            for layer in layers:
                hidden = layer(hidden, rotary, attn_mask, is_causal, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(seq)
        if self.layer_norm is not None:
            hidden = self.layer_norm(hidden)
        return hidden
