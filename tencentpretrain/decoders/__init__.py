"""Decoder registry: config string -> class.

Decoder-only LLaMA models need no decoder (``"decoder": null`` or absent). A decoder is
built as ``cls(config)``, implements the encoder interface (``encoders/base.py``: its
layers, final norm, activation checkpointing) and is called as ``decoder(memory, seg=)``
on the encoder's output; the targets read what it returns. Encoder-decoder modules
register here when they are added.
"""
str2decoder = {}
