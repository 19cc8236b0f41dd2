"""Encoder registry: config string -> class."""
from tencentpretrain.encoders.transformer_encoder import TransformerEncoder

str2encoder = {"transformer": TransformerEncoder}
