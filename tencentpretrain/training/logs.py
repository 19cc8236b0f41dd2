"""The run log: rank 0's lines on the terminal (above the progress bar) and, with
TencentPretrain's ``--log_path``, in a file; ``--log_level`` / ``--log_file_level`` filter each."""
import logging
import os
import sys

from tqdm import tqdm

LOGGER = logging.getLogger("tencentpretrain.training")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEEPSPEED_LOGGER = logging.getLogger("DeepSpeed")  # the name deepspeed.utils.logging uses


class _NoCpuFallbackNotice(logging.Filter):
    """DeepSpeed announces its CPU fallback from every process that imports it (each rank,
    even for --help); the start-up line names the device once instead."""

    def filter(self, record):
        return not record.getMessage().startswith("Setting accelerator to CPU")


_CPU_FALLBACK_NOTICE = _NoCpuFallbackNotice()


def before_deepspeed_import():
    """Call before the first ``import deepspeed``, which logs the notice."""
    DEEPSPEED_LOGGER.addFilter(_CPU_FALLBACK_NOTICE)  # added once, however often called


def set_deepspeed_level(log_level):
    """DeepSpeed's logger shows warnings and errors (its info lines are long configuration
    dumps), everything with --log_level DEBUG, errors only with ERROR."""
    level = {"DEBUG": logging.DEBUG, "ERROR": logging.ERROR}.get(log_level, logging.WARNING)
    DEEPSPEED_LOGGER.setLevel(level)
    for handler in DEEPSPEED_LOGGER.handlers:
        handler.setLevel(level)


class _TerminalHandler(logging.Handler):
    """Writes through tqdm so a line never tears the progress bar."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stdout)
        sys.stdout.flush()


def setup_logging(rank, log_level="INFO", log_path=None, log_file_level="INFO"):
    """Route LOGGER for this run; other ranks stay silent (every rank fails alike)."""
    close_logging()
    set_deepspeed_level(log_level)
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    if rank != 0:
        LOGGER.addHandler(logging.NullHandler())
        return
    terminal = _TerminalHandler()
    terminal.setLevel(log_level)
    LOGGER.addHandler(terminal)
    if log_path:
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        to_file = logging.FileHandler(log_path, encoding="utf-8")
        to_file.setLevel(log_file_level)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        LOGGER.addHandler(to_file)


def close_logging():
    set_deepspeed_level("INFO")  # back to DeepSpeed's default, warnings
    for handler in list(LOGGER.handlers):
        LOGGER.removeHandler(handler)
        handler.close()
