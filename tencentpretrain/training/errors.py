"""The one exception type of training; its message is a single line for ``error: ...``."""

from tencentpretrain.errors import UserError


class TrainingError(UserError):
    """Options, data or checkpoints that cannot train together (raised before the first step),
    or a run that must stop (a non-finite loss)."""
