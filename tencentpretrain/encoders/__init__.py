"""Encoder registry: config string -> class (an ``Encoder``, encoders/base.py)."""
from tencentpretrain.encoders.base import Encoder
from tencentpretrain.encoders.transformer_encoder import TransformerEncoder

str2encoder = {"transformer": TransformerEncoder}

__all__ = ["Encoder", "str2encoder"]
