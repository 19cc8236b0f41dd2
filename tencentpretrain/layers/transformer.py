"""One transformer layer: attention and feed-forward, each with a residual.

Pre-norm (LLaMA): x + attn(norm(x)), then x + ffn(norm(x)).
Post-norm (BERT): norm(x + attn(x)), then norm(x + ffn(x)).
"""
import torch.nn as nn

from tencentpretrain.layers import str2act, str2feedforward, str2layernorm
from tencentpretrain.layers.multi_headed_attn import MultiHeadedAttention


class TransformerLayer(nn.Module):
    def __init__(self, config, layer_index):
        super().__init__()
        has_bias = not config.remove_transformer_bias
        self.pre_norm = config.layernorm_positioning == "pre"
        self.self_attn = MultiHeadedAttention(config.hidden_size, config.heads_num,
                                              config.kv_heads_num, config.dropout, has_bias,
                                              layer_index, config.qkv_bias, config.head_dim,
                                              config.remove_attention_scale)
        self.feed_forward = str2feedforward[config.feed_forward](
            config.hidden_size, config.feedforward_size, str2act[config.hidden_act], has_bias)
        norm = str2layernorm[config.layernorm]
        self.layer_norm_1 = norm(config.hidden_size, eps=config.layernorm_eps)
        self.layer_norm_2 = norm(config.hidden_size, eps=config.layernorm_eps)
        self.dropout_1 = nn.Dropout(config.dropout)
        self.dropout_2 = nn.Dropout(config.dropout)

    def forward(self, x, rotary=None, attn_mask=None, is_causal=False, kv_cache=None):
        if self.pre_norm:
            x = x + self.dropout_1(self.self_attn(self.layer_norm_1(x), rotary, attn_mask,
                                                  is_causal, kv_cache))
            return x + self.dropout_2(self.feed_forward(self.layer_norm_2(x)))
        x = self.layer_norm_1(x + self.dropout_1(self.self_attn(x, rotary, attn_mask,
                                                                is_causal, kv_cache)))
        return self.layer_norm_2(x + self.dropout_2(self.feed_forward(x)))
