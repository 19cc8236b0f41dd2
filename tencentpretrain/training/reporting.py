"""What rank 0 shows: a progress bar, a line every --report_steps, TensorBoard scalars."""
import sys

from tqdm import tqdm


class Reporter:
    def __init__(self, rank, total_steps, start_step, tensorboard_dir=None):
        self.active = rank == 0
        self.bar = self.writer = None
        if not self.active:
            return
        self.bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                        disable=None, file=sys.stderr)  # disable=None: no bar when not a tty
        if tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(tensorboard_dir)

    def say(self, line):
        if self.active:
            tqdm.write(line, file=sys.stdout)
            sys.stdout.flush()

    def advance(self):
        if self.bar is not None:
            self.bar.update(1)

    def report(self, step, loss, lr, grad_norm, tokens_per_s, mfu):
        if not self.active:
            return
        line = (f"step {step:>7} | loss {loss:.4f} | lr {lr:.3e} | grad norm {grad_norm:.4f} | "
                f"{tokens_per_s:,.0f} tokens/s")
        if mfu is not None:
            line += f" | MFU {100 * mfu:.1f}%"
        self.say(line)
        if self.writer is not None:
            scalars = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tokens_per_s}
            if mfu is not None:
                scalars["mfu"] = mfu
            for name, value in scalars.items():
                self.writer.add_scalar(f"train/{name}", value, step)
            self.writer.flush()

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
