"""Stack of transformer layers (``"encoder": "transformer"``).

Builds the attention mask and rotary angles once per forward and hands them to
every layer. Activation checkpointing wraps groups of layers so their
activations are recomputed in backward instead of kept.
"""
import torch
import torch.nn as nn

from tencentpretrain.data.packing import positions
from tencentpretrain.encoders.base import Encoder
from tencentpretrain.layers import str2layernorm
from tencentpretrain.layers.masks import attention_mask, isolates, isolation_kind, str2mask
from tencentpretrain.layers.relative_position import add_bias, relative_position_embedding
from tencentpretrain.layers.rotary import rotary_rotations
from tencentpretrain.layers.transformer import TransformerLayer


class TransformerEncoder(Encoder):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.make_mask = str2mask[config.mask]
        self.relative_pos_emb = relative_position_embedding(config, bidirectional=True)
        self.transformer = nn.ModuleList(
            [TransformerLayer(config, i) for i in range(config.layers_num)])
        self.layer_norm = None
        if config.layernorm_positioning == "pre":
            self.layer_norm = str2layernorm[config.layernorm](config.hidden_size,
                                                              eps=config.layernorm_eps)
        # how packed samples are isolated: "spans" (causal SDPA per example; None means
        # this), "block_mask" (FlexAttention, CUDA only) or "dense" (a boolean [seq, seq] mask)
        self.isolation = None

    def layers(self):
        return self.transformer

    def final_norm(self):
        return self.layer_norm

    def shared_modules(self):
        return [self.relative_pos_emb] if self.relative_pos_emb is not None else []

    def isolation_kind(self):
        return isolation_kind(self.isolation, bool(self.config.dropout) and self.training)

    def forward(self, hidden, seg=None, position_ids=None, key_mask=None, kv_cache=None,
                isolate_segments=False):
        """isolate_segments (packed examples): attention and positions per ``seg``, whatever
        the config's mask; ``causal_document`` configs isolate whenever ``seg`` is given."""
        batch, seq, _ = hidden.shape
        past = kv_cache.length if kv_cache is not None else 0
        isolated = isolates(self.make_mask, seg, isolate_segments)
        if position_ids is None:
            position_ids = positions(batch, seq, past, hidden.device, seg, isolated)
        rotary = None
        if self.config.rotary_position_embedding:
            rotary = rotary_rotations(position_ids, self.config.head_dim, self.config.rope_theta,
                                      hidden.device, self.config.rope_scaling)
        attn_mask, is_causal = attention_mask(
            self.make_mask, batch, seq, past, hidden.device, seg=seg, key_mask=key_mask,
            window=self.config.sliding_window, isolated=isolated,
            kind=self.isolation_kind() if isolated else "dense")
        if self.relative_pos_emb is not None:  # the mask becomes additive: bias, -inf
            bias = self.relative_pos_emb(seq, past + seq, past, hidden.device).to(hidden.dtype)
            attn_mask, is_causal = add_bias(bias, _dense(attn_mask, is_causal, seq, past,
                                                         hidden.device)), False

        if self.checkpointing():
            hidden = self.checkpointed(
                hidden, attn_mask, lambda layer, x, mask: layer(x, rotary, mask, is_causal))
        else:
            for layer in self.transformer:
                hidden = layer(hidden, rotary, attn_mask, is_causal, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(seq)
        if self.layer_norm is not None:
            hidden = self.layer_norm(hidden)
        return hidden


def _dense(attn_mask, is_causal, seq, past, device):
    """A mask's boolean form (None: everything visible) to combine with a position bias."""
    if is_causal and attn_mask is None:
        key = torch.arange(past + seq, device=device)
        return (key[None, :] <= key[past:, None])[None, None]
    if attn_mask is not None and not torch.is_tensor(attn_mask):
        raise ValueError("relative position bias cannot combine with packed-sample masks")
    return attn_mask
