"""The run log: rank 0's lines on the terminal (above the progress bar) and, with
TencentPretrain's ``--log_path``, in a file; ``--log_level`` / ``--log_file_level`` filter each."""
import logging
import os
import sys

from tqdm import tqdm

LOGGER = logging.getLogger("tencentpretrain.training")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _TerminalHandler(logging.Handler):
    """Writes through tqdm so a line never tears the progress bar."""

    def emit(self, record):
        tqdm.write(self.format(record), file=sys.stdout)
        sys.stdout.flush()


def setup_logging(rank, log_level="INFO", log_path=None, log_file_level="INFO"):
    """Route LOGGER for this run; other ranks stay silent (every rank fails alike)."""
    close_logging()
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
    for handler in list(LOGGER.handlers):
        LOGGER.removeHandler(handler)
        handler.close()
