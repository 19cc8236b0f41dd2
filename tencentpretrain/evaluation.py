"""Loss and perplexity of a model over a token dataset, by the training loss's rules.

Every batch is collated exactly as training collates it and the model returns
``(loss_sum, counted_tokens)``; the sums over all batches are divided once, so the
loss of one batch is its training loss and the loss of many is the mean over all
counted tokens, whatever the batch size.
"""
import math
import os
import sys
import tempfile

import torch
from tqdm import tqdm

from tencentpretrain.data import DatasetError, TokenDataset, collate, preprocess
from tencentpretrain.data.batching import batch_to


def batch_loss(model, batch):
    """(loss_sum, counted_tokens) of one collated batch, called as training calls it."""
    device = next(model.parameters()).device
    return model(**batch_to(batch, device))


@torch.no_grad()
def evaluate(model, dataset, batch_size=8, prefix_lm_loss=False, progress=False):
    """{"loss", "perplexity", "tokens"} over every sample of ``dataset`` in order;
    ``progress``: a bar of batches on stderr (on a terminal)."""
    if prefix_lm_loss and not dataset.has_prompt_lengths:
        raise DatasetError(f"--prefix_lm_loss needs an alpaca dataset; {dataset.path} is "
                           f"{dataset.data_processor}")
    total, tokens = 0.0, 0
    starts = range(0, len(dataset), batch_size)
    for start in tqdm(starts, desc=f"{len(dataset):,} samples", unit="batch", file=sys.stderr,
                      disable=None if progress else True, dynamic_ncols=True):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        loss_sum, count = batch_loss(model, collate(samples, dataset.pad_id, prefix_lm_loss))
        total += float(loss_sum)
        tokens += int(count)
    if tokens == 0:
        raise DatasetError(f"{dataset.path}: no counted tokens to evaluate")
    loss = total / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": tokens}


def evaluate_dataset(model, tokenizer, dataset_path, batch_size=8, prefix_lm_loss=False,
                     progress=False):
    dataset = TokenDataset(dataset_path)
    dataset.check_fits(tokenizer, model.vocab_size)
    return evaluate(model, dataset, batch_size, prefix_lm_loss, progress)


def evaluate_text(model, tokenizer, test_path, seq_length, batch_size=8, progress=False):
    """Raw text, packed into samples by preprocess.py's ``lm`` processor (one document a
    line) in a temporary dataset, so evaluation and training see the same samples."""
    with tempfile.TemporaryDirectory(prefix="evaluate_ppl-") as tmp:
        dataset_path = os.path.join(tmp, "dataset")
        preprocess(test_path, tokenizer.spm_model_path, dataset_path, data_processor="lm",
                   tokenizer_path=tokenizer.tokenizer_path,
                   seq_length=seq_length, progress=False)
        return evaluate_dataset(model, tokenizer, dataset_path, batch_size, progress=progress)
