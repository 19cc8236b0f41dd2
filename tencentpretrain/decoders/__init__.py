"""Decoder registry: config string -> class.

Decoder-only LLaMA models need no decoder (``"decoder": null``); encoder-decoder
modules register here when they are added.
"""
str2decoder = {}
