"""Command-line options of pretrain.py, grouped by concern, and their checks.

Names follow TencentPretrain (``--pretrained_model_path``, ``--total_steps``,
``--deepspeed_checkpoint_activations`` ...) so its command lines run as written.
"""
import argparse
import os

from tencentpretrain.data import PROCESSORS
from tencentpretrain.training.errors import TrainingError
from tencentpretrain.training.scheduler import SCHEDULERS


def build_parser():
    parser = argparse.ArgumentParser(
        description="Pre-train or instruction-tune a LLaMA model, in one process or under "
                    "DeepSpeed (`deepspeed pretrain.py --deepspeed ...`).")

    model = parser.add_argument_group("model")
    model.add_argument("--config_path", required=True, help="Model config JSON.")
    model.add_argument("--pretrained_model_path", default=None,
                       help="Weights to start from (.bin or .safetensors); random init if omitted.")
    model.add_argument("--spm_model_path", required=True,
                       help="SentencePiece model the dataset was made with (its hash is checked).")

    data = parser.add_argument_group("data")
    data.add_argument("--dataset_path", required=True, help="Output folder of preprocess.py.")
    data.add_argument("--data_processor", choices=list(PROCESSORS), default="lm",
                      help="Must match the dataset: lm (packed documents) or alpaca "
                           "(instruction, answer).")
    data.add_argument("--prefix_lm_loss", action="store_true",
                      help="alpaca: learn only the answer and its EOS, not the prompt.")
    data.add_argument("--seed", type=int, default=7, help="Initialisation and data order.")

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--batch_size", type=int, default=None,
                       help="Samples per rank per micro-batch (overrides the DeepSpeed config's "
                            "train_micro_batch_size_per_gpu; default: that, else 32).")
    optim.add_argument("--accumulation_steps", type=int, default=None,
                       help="Micro-batches per optimizer step (overrides the DeepSpeed config's "
                            "gradient_accumulation_steps; default: that, else 1).")
    optim.add_argument("--learning_rate", type=float, default=2e-5, help="Peak learning rate.")
    optim.add_argument("--warmup", type=float, default=0.1,
                       help="Fraction of --total_steps spent warming up linearly.")
    optim.add_argument("--scheduler", "--lr_decay", dest="scheduler", choices=SCHEDULERS,
                       default="linear", help="Learning rate after warm-up.")
    optim.add_argument("--total_steps", type=int, default=100000, help="Optimizer steps to run.")

    progress = parser.add_argument_group("checkpoints and logging")
    progress.add_argument("--output_model_path", required=True,
                          help="Weights go to OUTPUT-STEP; resumable state to OUTPUT.checkpoints/.")
    progress.add_argument("--save_checkpoint_steps", type=int, default=10000)
    progress.add_argument("--resume_from_checkpoint", default=None,
                          help="A .checkpoints folder: continue from its latest save.")
    progress.add_argument("--report_steps", type=int, default=100)
    progress.add_argument("--tensorboard_dir", default=None, help="Write TensorBoard scalars here.")
    progress.add_argument("--peak_tflops", type=float, default=None,
                          help="Per-device peak TFLOP/s for MFU when the GPU is not in the "
                               "built-in table.")

    parallel = parser.add_argument_group("parallelism and memory")
    parallel.add_argument("--world_size", type=int, default=None,
                          help="Expected number of ranks; checked against the launcher.")
    parallel.add_argument("--enable_zero3", action="store_true",
                          help="Build the model under deepspeed.zero.Init (stage-3 config).")
    parallel.add_argument("--deepspeed_checkpoint_activations", action="store_true",
                          help="Recompute layer activations in backward.")
    parallel.add_argument("--deepspeed_checkpoint_layers_num", type=int, default=1,
                          help="Layers per activation checkpoint.")
    parallel.add_argument("--compile", action="store_true",
                          help="torch.compile each transformer layer (GPU; the first steps "
                               "compile, later ones run faster).")
    parallel.add_argument("--local_rank", type=int, default=-1, help="Set by the launcher.")
    _add_deepspeed_arguments(parser)
    return parser


def _add_deepspeed_arguments(parser):
    """--deepspeed/--deepspeed_config, from DeepSpeed itself when it is installed."""
    try:
        import deepspeed
    except ImportError:
        group = parser.add_argument_group("DeepSpeed")
        group.add_argument("--deepspeed", action="store_true")
        group.add_argument("--deepspeed_config", default=None)
        return
    deepspeed.add_config_arguments(parser)


def check_args(args):
    """Option-only checks (no file is read here beyond existence)."""
    positive = ["total_steps", "save_checkpoint_steps", "report_steps",
                "deepspeed_checkpoint_layers_num", "batch_size", "accumulation_steps",
                "world_size"]
    for name in positive:
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise TrainingError(f"--{name} must be positive, got {value}")
    if not 0 <= args.warmup < 1:
        raise TrainingError(f"--warmup is a fraction of --total_steps in [0, 1), got {args.warmup}")
    if args.learning_rate <= 0:
        raise TrainingError(f"--learning_rate must be positive, got {args.learning_rate}")
    for name in ["config_path", "spm_model_path", "pretrained_model_path", "deepspeed_config"]:
        path = getattr(args, name)
        if path is not None and not os.path.isfile(path):
            raise TrainingError(f"--{name} {path}: no such file")
    for name in ["dataset_path", "resume_from_checkpoint"]:
        path = getattr(args, name)
        if path is not None and not os.path.isdir(path):
            raise TrainingError(f"--{name} {path}: no such folder")
    if args.deepspeed and not args.deepspeed_config:
        raise TrainingError("--deepspeed needs --deepspeed_config")
    if args.enable_zero3 and not args.deepspeed:
        raise TrainingError("--enable_zero3 needs --deepspeed (ZeRO-3 is DeepSpeed's)")
    if not args.deepspeed and _launched_ranks() > 1:
        raise TrainingError(f"{_launched_ranks()} ranks were launched without --deepspeed; "
                            "add --deepspeed --deepspeed_config, or run one process")
    return args


def _launched_ranks():
    return int(os.environ.get("WORLD_SIZE", "1"))
