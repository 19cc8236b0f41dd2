"""Held-out loss during training: ``pretrain.py --eval_dataset_path DIR --eval_steps N``.

The loss is the training loss's (loss.py): the summed cross-entropy of the counted tokens
of the held-out set (or of its first ``--eval_batches`` global batches) divided by their
number, every batch collated as training collates it (``--prefix_lm_loss``, packed
examples isolated), so it equals ``inference/evaluate_ppl.py`` on the same weights and data.
Global batch g holds samples g*B*W .. (g+1)*B*W - 1 in file order, rank r the r-th B of them;
every rank runs the same number of forward passes (ZeRO-3 gathers parameters in lockstep).
In eval mode nothing random is drawn, the RNG state is restored all the same, and the
training data stream is not touched: a run with evaluation trains exactly as one without.
"""
import math
import os

import torch

from tencentpretrain.adapters import adapter_files
from tencentpretrain.data import collate
from tencentpretrain.training.errors import TrainingError
from tencentpretrain.training.train_state import rng_state, set_rng_state
from tencentpretrain.utils.files import read_json, write_text_atomic


def add_eval_arguments(parser):
    group = parser.add_argument_group("held-out evaluation")
    group.add_argument("--eval_dataset_path", default=None,
                       help="A held-out dataset (preprocess.py, the same tokenizer and "
                            "--data_processor): its loss is reported during training.")
    group.add_argument("--eval_steps", type=int, default=None,
                       help="Evaluate every N steps and at the last step (default: at the last "
                            "step only).")
    group.add_argument("--eval_batches", type=int, default=None,
                       help="Only the first K global batches (--batch_size x ranks samples "
                            "each) of the held-out set (default: all of it).")
    group.add_argument("--save_best", action="store_true",
                       help="Also keep the weights of the lowest held-out loss at OUTPUT-best "
                            "(never deleted by --save_total_limit).")


def check_eval_args(args):
    for name in ("eval_steps", "eval_batches"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise TrainingError(f"--{name} must be positive, got {value}")
    if args.eval_dataset_path is None:
        given = [f"--{name}" for name in ("eval_steps", "eval_batches")
                 if getattr(args, name) is not None] + (["--save_best"] if args.save_best else [])
        if given:
            raise TrainingError(f"{given[0]} needs --eval_dataset_path (a held-out dataset)")
    elif not os.path.isdir(args.eval_dataset_path):
        raise TrainingError(f"--eval_dataset_path {args.eval_dataset_path}: no such folder "
                            "(a folder preprocess.py wrote)")


def best_weights_path(output_model_path):
    return f"{output_model_path}-best"


def _record_path(output_model_path):
    """Step and loss of the best weights, beside them (read back on resume)."""
    return f"{best_weights_path(output_model_path)}.eval.json"


def eval_batches(dataset, batch_size, rank, world_size, prefix_lm_loss=False, max_batches=None):
    """This rank's collated micro-batches (see the module doc). A rank whose share of the last
    global batch is empty runs a copy of sample 0 that counts no token."""
    global_batch = batch_size * world_size
    count = math.ceil(len(dataset) / global_batch)
    for g in range(count if max_batches is None else min(count, max_batches)):
        start = g * global_batch + rank * batch_size
        indices = range(start, min(start + batch_size, len(dataset)))
        batch = collate([dataset[i] for i in indices or [0]], dataset.pad_id, prefix_lm_loss)
        if not indices:
            batch["loss_mask"][:] = False
        yield batch


class Validator:
    """Runs the held-out evaluation when due, reports it, remembers the best and last."""

    def __init__(self, args, dataset, batch_size):
        self.dataset, self.batch_size = dataset, batch_size
        self.prefix_lm_loss, self.every = args.prefix_lm_loss, args.eval_steps
        self.max_batches, self.total_steps = args.eval_batches, args.total_steps
        self.output = args.output_model_path if args.save_best else None
        self.use_lora = args.use_lora
        self.last = self.best = None  # (step, loss)
        if self.output and args.resume_from_checkpoint and os.path.isfile(
                _record_path(self.output)):  # the best before the resumed run stays the best
            record = read_json(_record_path(self.output), TrainingError, expect=dict)
            self.best = (record["step"], record["loss"])

    def due(self, step):
        return step == self.total_steps or bool(self.every) and step % self.every == 0

    @torch.no_grad()
    def loss(self, backend, model):
        """(loss, counted tokens) over all ranks' shares."""
        rng = rng_state()
        model.eval()
        total = torch.zeros(2, dtype=torch.float64)
        try:
            for batch in eval_batches(self.dataset, self.batch_size, backend.rank,
                                      backend.world_size, self.prefix_lm_loss, self.max_batches):
                loss_sum, count = backend.forward(batch)
                total += torch.stack([loss_sum.detach().double().cpu(),
                                      count.detach().double().cpu()])
        finally:
            model.train()
            set_rng_state(rng)
        loss_sum, tokens = backend.all_reduce_sum(total).cpu().tolist()
        if tokens == 0:
            raise TrainingError(f"--eval_dataset_path {self.dataset.path}: no counted tokens "
                                "to evaluate")
        return loss_sum / tokens, int(tokens)

    def run(self, backend, model, step, reporter):
        """Evaluate, report (``eval | step N | loss X | ppl Y``, TensorBoard ``eval/loss``);
        True when this is the best loss so far."""
        loss, _ = self.loss(backend, model)
        self.last = (step, loss)
        improved = self.best is None or loss < self.best[1]
        if improved:
            self.best = (step, loss)
        reporter.say(f"eval | step {step} | loss {loss:.6f} | ppl {math.exp(min(loss, 700)):.4f}")
        if reporter.writer is not None:
            reporter.writer.add_scalar("eval/loss", loss, step)
            reporter.writer.flush()
        return improved

    def saved_best(self, rank):
        """After the best weights are written: their step and loss beside them."""
        if rank == 0:
            step, loss = self.best
            write_text_atomic(_record_path(self.output), f'{{"step": {step}, "loss": {loss!r}}}\n')

    def summary(self):
        """(what, where) lines for the end-of-run summary."""
        if self.last is None:
            return []
        lines = [("eval loss", f"last {self.last[1]:.4f} (step {self.last[0]}), best "
                               f"{self.best[1]:.4f} (step {self.best[0]})")]
        if self.output:
            best = best_weights_path(self.output)
            what, where = (("best adapter", " + ".join(adapter_files(best))) if self.use_lora
                           else ("best weights", best))
            lines.append((what, f"{where} (step {self.best[0]}, never pruned)"))
        return lines
