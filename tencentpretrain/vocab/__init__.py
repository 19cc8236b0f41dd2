"""Vocabulary extension: train a domain SentencePiece model, merge it into a base one,
resize a checkpoint to the merged vocabulary. See docs/vocabulary.md."""
