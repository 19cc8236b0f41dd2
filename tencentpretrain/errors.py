"""The one base class of the errors bad input raises.

Every error a user can cause (a path, an option, a config, a corpus line) is a
``UserError`` whose message is one line naming what to fix; entry points catch
this class alone and print ``error: <message>`` (``utils/cli.py``). Anything
else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input; the message is one line naming the file, line or option."""
