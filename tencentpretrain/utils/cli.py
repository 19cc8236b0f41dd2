"""Error reporting shared by the command-line entry points."""
import sys

from tencentpretrain.errors import UserError


def run(main, errors=UserError):
    """Call ``main()``; bad input (a ``UserError``) becomes one ``error: ...`` line on stderr
    and exit status 2, Ctrl-C a quiet exit with status 130. Never a traceback for bad input."""
    try:
        main()
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
