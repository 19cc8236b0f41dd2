"""Error reporting shared by the command-line entry points (pretrain.py, preprocess.py, the
inference and conversion scripts): the one error/exit path."""
import sys

from tencentpretrain.errors import UserError


def run(main, errors=UserError, rank=0, interrupted=None):
    """Call ``main()`` and return what it returns; bad input (a ``UserError``) becomes one
    ``error: ...`` line on stderr and exit status 2, Ctrl-C (or a SIGTERM turned into it)
    exit status 130 with ``error: <interrupted>`` when given, else a bare newline. Never a
    traceback for bad input. Only rank 0 prints (under a launcher every rank fails alike)."""
    try:
        return main()
    except errors as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        if rank == 0:
            print(f"error: {interrupted}" if interrupted else "", file=sys.stderr, flush=True)
        sys.exit(130)
