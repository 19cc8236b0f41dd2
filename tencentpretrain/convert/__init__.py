"""Checkpoint conversion between our layout and Hugging Face / Meta layouts."""
