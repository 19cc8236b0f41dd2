"""Transformer decoder (``"decoder": "transformer"``): T5's, and any pre-norm
encoder-decoder's.

Each layer: x + self_attn(norm_1(x)) (causal), x + context_attn(norm_2(x), encoder output),
x + feed_forward(norm_3(x)). With ``relative_position_embedding`` one causal-bucket bias
(``decoder.self_pos_emb``) is computed per forward and added in every layer's
self-attention; cross-attention has none. With ``tie_weights`` the output is scaled by
``hidden_size ** -0.5`` before the (tied) output layer, as T5 does.

Names follow TencentPretrain: ``decoder.transformer_decoder.N.{self_attn,context_attn,
feed_forward,layer_norm_1,layer_norm_2,layer_norm_3}``, ``decoder.layer_norm``.

Incremental decoding: ``EncoderDecoderCache`` holds the self-attention keys/values (they
grow by one position per step) and each layer's cross-attention keys/values, computed from
the encoder's output once per source.
"""
import torch
import torch.nn as nn

from tencentpretrain.encoders.base import Encoder
from tencentpretrain.layers import str2act, str2feedforward, str2layernorm
from tencentpretrain.layers.kv_cache import KVCache
from tencentpretrain.layers.multi_headed_attn import MultiHeadedAttention
from tencentpretrain.layers.relative_position import add_bias, relative_position_embedding


class EncoderDecoderCache(KVCache):
    """Self-attention KV cache of the decoder, plus each layer's cross-attention K/V."""

    def __init__(self, layers_num, batch_size, heads, head_dim, max_length, dtype, device):
        super().__init__(layers_num, batch_size, heads, head_dim, max_length, dtype, device)
        self.cross = [None] * layers_num

    def reorder(self, keep):
        super().reorder(keep)
        self.cross = [None if kv is None else tuple(t.index_select(0, keep) for t in kv)
                      for kv in self.cross]


def _attention(config, layer_index):
    return MultiHeadedAttention(config.hidden_size, config.heads_num, config.kv_heads_num,
                                config.dropout, not config.remove_transformer_bias, layer_index,
                                config.qkv_bias, config.head_dim, config.remove_attention_scale)


class TransformerDecoderLayer(nn.Module):
    def __init__(self, config, layer_index):
        super().__init__()
        has_bias = not config.remove_transformer_bias
        self.layer_index = layer_index
        self.self_attn = _attention(config, layer_index)
        self.context_attn = _attention(config, layer_index)
        self.feed_forward = str2feedforward[config.feed_forward](
            config.hidden_size, config.feedforward_size, str2act[config.hidden_act], has_bias)
        norm = str2layernorm[config.layernorm]
        self.layer_norm_1 = norm(config.hidden_size, eps=config.layernorm_eps)
        self.layer_norm_2 = norm(config.hidden_size, eps=config.layernorm_eps)
        self.layer_norm_3 = norm(config.hidden_size, eps=config.layernorm_eps)
        self.dropout_1 = nn.Dropout(config.dropout)
        self.dropout_2 = nn.Dropout(config.dropout)
        self.dropout_3 = nn.Dropout(config.dropout)

    def forward(self, x, memory, self_mask, memory_mask, kv_cache=None):
        """memory: the encoder's output [batch, src, hidden], or its (keys, values) already
        projected by this layer (cached generation)."""
        x = x + self.dropout_1(self.self_attn(self.layer_norm_1(x), None, self_mask,
                                              self_mask is None, kv_cache))
        memory_kv = memory if isinstance(memory, tuple) else self.context_attn.memory_kv(memory)
        x = x + self.dropout_2(self.context_attn.cross(self.layer_norm_2(x), memory_kv,
                                                       memory_mask))
        return x + self.dropout_3(self.feed_forward(self.layer_norm_3(x)))


class TransformerDecoder(Encoder):
    def __init__(self, config):
        super().__init__()
        if config.layernorm_positioning != "pre":
            raise ValueError("the transformer decoder is pre-norm")
        self.config = config
        self.self_pos_emb = relative_position_embedding(config, bidirectional=False)
        self.transformer_decoder = nn.ModuleList(
            [TransformerDecoderLayer(config, i) for i in range(config.decoder_layers)])
        self.layer_norm = str2layernorm[config.layernorm](config.hidden_size,
                                                          eps=config.layernorm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def layers(self):
        return self.transformer_decoder

    def final_norm(self):
        return self.layer_norm

    def shared_modules(self):
        return [self.self_pos_emb] if self.self_pos_emb is not None else []

    def new_cache(self, batch_size, max_length, dtype, device):
        c = self.config
        return EncoderDecoderCache(c.decoder_layers, batch_size, c.kv_heads_num, c.head_dim,
                                   max_length, dtype, device)

    def forward(self, memory, seg=None, tgt=None, memory_mask=None, kv_cache=None):
        """memory: encoder output [batch, src, hidden]; tgt: the embedded decoder input
        [batch, tgt, hidden]; memory_mask: bool [batch, src], True = real source token
        (default: ``seg`` > 0 when given, else all)."""
        if tgt is None:
            raise ValueError("the transformer decoder needs the embedded target (tgt=)")
        if memory_mask is None and seg is not None:
            memory_mask = seg > 0
        cross_mask = None if memory_mask is None else memory_mask[:, None, None, :].bool()
        batch, seq, _ = tgt.shape
        past = kv_cache.length if kv_cache is not None else 0
        self_mask = None  # causal: SDPA's is_causal when there is no bias and no cache
        if self.self_pos_emb is not None or past:
            key = torch.arange(past + seq, device=tgt.device)
            self_mask = (key[None, :] <= key[past:, None])[None, None]
            if self.self_pos_emb is not None:
                bias = self.self_pos_emb(seq, past + seq, past, tgt.device).to(tgt.dtype)
                self_mask = add_bias(bias, self_mask)

        hidden = tgt
        if self.checkpointing():
            hidden = self.checkpointed(
                hidden, self_mask, lambda layer, x, mask, mem: layer(x, mem, mask, cross_mask),
                memory)
        else:
            for i, layer in enumerate(self.transformer_decoder):
                mem = memory
                if kv_cache is not None:
                    if kv_cache.cross[i] is None:
                        kv_cache.cross[i] = layer.context_attn.memory_kv(memory)
                    mem = kv_cache.cross[i]
                hidden = layer(hidden, mem, self_mask, cross_mask, kv_cache)
        if kv_cache is not None:
            kv_cache.advance(seq)
        hidden = self.dropout(self.layer_norm(hidden))
        if self.config.tie_weights:  # T5: rescale before the output layer tied to the embedding
            hidden = hidden * self.config.hidden_size ** -0.5
        return hidden
