"""Embedding registry: config string -> class."""
from tencentpretrain.embeddings.word_embedding import WordEmbedding

str2embedding = {"word": WordEmbedding}
