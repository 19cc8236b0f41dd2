"""Token datasets: preprocessing a corpus into shards, and reading them back for training.

Format: docs/data_format.md. Reader API used by pretrain.py and inference:
TokenDataset, Sample, collate, sample_order, BatchIterator, DatasetError.
"""
from .batching import BatchIterator, collate, sample_order
from .prefetch import Prefetcher
from .dataset import Sample, TokenDataset
from .format import FORMAT_VERSION, CorpusError, DatasetError
from .builder import format_summary, preprocess
from .processors import PROCESSORS, str2processor

__all__ = ["BatchIterator", "CorpusError", "DatasetError", "FORMAT_VERSION", "PROCESSORS", "Prefetcher",
           "Sample", "TokenDataset", "collate", "format_summary", "preprocess", "sample_order", "str2processor"]
