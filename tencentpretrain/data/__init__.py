"""Token datasets: preprocessing a corpus into shards, and reading them back for training.

Format: docs/data_format.md. Reader API used by pretrain.py and inference:
TokenDataset, Sample, collate, sample_order, BatchIterator, DatasetError.

Nothing imported here imports torch, so preprocess.py starts fast and stays small:
``Prefetcher`` (which pins batches with torch) is imported on first use (PEP 562).
"""
import importlib

from tencentpretrain.data.batching import BatchIterator, collate, sample_order
from tencentpretrain.data.dataset import Sample, TokenDataset
from tencentpretrain.data.format import FORMAT_VERSION, CorpusError, DatasetError
from tencentpretrain.data.builder import format_summary, preprocess
from tencentpretrain.data.processors import PROCESSORS, str2processor

__all__ = ["BatchIterator", "CorpusError", "DatasetError", "FORMAT_VERSION", "PROCESSORS", "Prefetcher",
           "Sample", "TokenDataset", "collate", "format_summary", "preprocess", "sample_order", "str2processor"]

_LAZY = {"Prefetcher": ".prefetch"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
