"""Token embedding table (``embedding.word.embedding.weight`` in checkpoints)."""
import torch.nn as nn


class WordEmbedding(nn.Module):
    def __init__(self, config, vocab_size):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, config.emb_size)

    def forward(self, input_ids, position_ids=None, seg=None):
        return self.embedding(input_ids)
