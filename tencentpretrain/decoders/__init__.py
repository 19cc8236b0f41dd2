"""Decoder registry: config string -> class.

Decoder-only LLaMA models need no decoder (``"decoder": null`` or absent). A decoder is
built as ``cls(config)``, implements the encoder interface (``encoders/base.py``: its
layers, final norm, activation checkpointing) and is called as ``decoder(memory, seg=)``
on the encoder's output (an encoder-decoder one also with ``tgt=`` the embedded decoder
input, ``memory_mask=`` and ``kv_cache=``); the targets read what it returns.
"""
from tencentpretrain.decoders.transformer_decoder import TransformerDecoder

str2decoder = {"transformer": TransformerDecoder}
