"""Training: options, the training loop, and the two backends it runs on.

    from tencentpretrain.training import build_parser, train
    train(build_parser().parse_args())

``plain`` (one process, PyTorch) and ``deepspeed`` (ZeRO, any number of ranks)
sit behind the same small Backend interface (``engine.py``), so debugging in
one process exercises the same loop, loss and checkpoint code as a cluster run.
"""
from tencentpretrain.training.errors import TrainingError
from tencentpretrain.training.options import build_parser
from tencentpretrain.training.trainer import train

__all__ = ["TrainingError", "build_parser", "train"]
