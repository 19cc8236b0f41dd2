"""Sum of the configured embeddings (``"embedding": ["word", ...]``), then optional
LayerNorm and dropout. LLaMA uses only ``word`` with no LayerNorm."""
import torch.nn as nn

from tencentpretrain.layers import str2layernorm


class Embedding(nn.Module):
    def __init__(self, config, vocab_size, str2embedding):
        super().__init__()
        self.names = list(config.embedding)
        for name in self.names:
            self.add_module(name, str2embedding[name](config, vocab_size))
        self.dropout = nn.Dropout(config.dropout)
        self.layer_norm = None
        if not config.remove_embedding_layernorm:
            self.layer_norm = str2layernorm[config.layernorm](config.emb_size,
                                                              eps=config.layernorm_eps)

    def forward(self, input_ids, position_ids=None, seg=None):
        emb = sum(getattr(self, name)(input_ids, position_ids, seg) for name in self.names)
        if self.layer_norm is not None:
            emb = self.layer_norm(emb)
        return self.dropout(emb)
