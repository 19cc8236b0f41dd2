"""What rank 0 shows: a progress bar, a line every --report_steps with elapsed time and
ETA, a summary at the end, TensorBoard scalars."""
import sys
import time

from tqdm import tqdm

from tencentpretrain.training.logs import LOGGER
from tencentpretrain.utils.optional import require


class Reporter:
    def __init__(self, rank, total_steps, start_step, tensorboard_dir=None):
        self.active = rank == 0
        self.bar = self.writer = None
        self.total_steps, self.start_step = total_steps, start_step
        self.started = time.perf_counter()
        self.tokens, self.first_loss, self.last_loss, self.best_loss = 0, None, None, None
        if not self.active:
            return
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=None, file=sys.stderr)  # disable=None: no bar when not a tty
        if tensorboard_dir:
            require("tensorboard", "tensorboard", "--tensorboard_dir")  # checked at start too
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(tensorboard_dir)

    def say(self, line):
        LOGGER.info(line)

    def advance(self):
        if self.bar is not None:
            self.bar.update(1)

    def add_tokens(self, tokens):
        self.tokens += tokens

    def report(self, step, loss, lr, grad_norm, tokens_per_s, mfu):
        self.first_loss = loss if self.first_loss is None else self.first_loss
        self.last_loss = loss
        self.best_loss = loss if self.best_loss is None else min(self.best_loss, loss)
        if not self.active:
            return
        elapsed = time.perf_counter() - self.started
        eta = elapsed / max(step - self.start_step, 1) * (self.total_steps - step)
        line = (f"step {step:>7}/{self.total_steps} | loss {loss:.4f} | lr {lr:.3e} | "
                f"grad norm {grad_norm:.4f} | {tokens_per_s:,.0f} tokens/s")
        if mfu is not None:
            line += f" | MFU {100 * mfu:.1f}%"
        line += f" | elapsed {_duration(elapsed)} | ETA {_duration(eta)}"
        self.say(line)
        if self.writer is not None:
            scalars = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s}
            if mfu is not None:
                scalars["mfu"] = mfu
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.flush()

    def summary(self, step, outputs=()):
        """The end of the run: steps, time, tokens, mean throughput, first, last and best
        reported loss, then a line per output (``outputs``: (what, where) pairs)."""
        elapsed = time.perf_counter() - self.started
        line = (f"finished steps {self.start_step + 1}..{step} in {_duration(elapsed)}: "
                f"{self.tokens:,} tokens, {self.tokens / max(elapsed, 1e-9):,.0f} tokens/s")
        if self.last_loss is not None:
            line += (f", loss first {self.first_loss:.4f}, last {self.last_loss:.4f}, "
                     f"best {self.best_loss:.4f}")
        self.say(line)
        for what, where in outputs:
            self.say(f"  {what:<14} {where}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


def _duration(seconds):
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
