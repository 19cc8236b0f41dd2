"""Command-line options of pretrain.py, grouped by concern, and their checks.

Names follow TencentPretrain (``--pretrained_model_path``, ``--total_steps``,
``--deepspeed_checkpoint_activations`` ...) so its command lines run as written.
"""
import argparse
import dataclasses
import os

from tencentpretrain.adapters import adapter_files
from tencentpretrain.data import PROCESSORS
from tencentpretrain.layers.lora import MODULES_TO_SAVE, TARGETS, LoraConfig, parse_names
from tencentpretrain.tokenizer import add_tokenizer_options
from tencentpretrain.training.errors import TrainingError
from tencentpretrain.training.logs import LEVELS, before_deepspeed_import
from tencentpretrain.training.scheduler import SCHEDULERS
from tencentpretrain.training.settings import Launch
from tencentpretrain.training.validation import add_eval_arguments, check_eval_args
from tencentpretrain.utils.optional import require


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default once: argparse's "(default: X)", unless the help already says
    what the default is (options whose None means "from elsewhere": the DeepSpeed config,
    the adapter continued from)."""

    def _get_help_string(self, action):
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser():
    parser = argparse.ArgumentParser(
        description="Pre-train or instruction-tune a LLaMA model, in one process or under "
                    "DeepSpeed (`deepspeed pretrain.py --deepspeed ...`).",
        formatter_class=_HelpFormatter)

    model = parser.add_argument_group("model")
    model.add_argument("--config_path", required=True, help="Model config JSON.")
    model.add_argument("--pretrained_model_path", default=None,
                       help="Weights to start from (.bin or .safetensors); random init if omitted.")
    add_tokenizer_options(model, spm_help="SentencePiece model the dataset was made with (its "
                                          "hash is checked).",
                          hf_help="Hugging Face tokenizer.json (or its folder) the dataset was "
                                  "made with (its hash is checked).")

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
    optim.add_argument("--scheduler", choices=SCHEDULERS, default="linear",
                       help="Learning-rate schedule (constant: no warm-up; the others warm up "
                            "over --warmup, then hold, or decay to 0).")
    optim.add_argument("--lr_decay", type=_lr_decay, default=0.5,
                       help="Power of the polynomial schedule (TencentPretrain's option).")
    optim.add_argument("--total_steps", type=int, default=100000, help="Optimizer steps to run.")

    progress = parser.add_argument_group("checkpoints and logging")
    progress.add_argument("--output_model_path", required=True,
                          help="Weights go to OUTPUT-STEP (and the final ones to OUTPUT itself); "
                               "resumable state to OUTPUT.checkpoints/.")
    progress.add_argument("--save_checkpoint_steps", type=int, default=10000,
                          help="Save weights and a resumable checkpoint every N steps (and at "
                               "the last step).")
    progress.add_argument("--save_total_limit", type=int, default=None,
                          help="Keep only the N newest saves (resumable checkpoints and weights "
                               "files); older ones are deleted once a new save is complete.")
    progress.add_argument("--resume_from_checkpoint", default=None,
                          help="A .checkpoints folder: continue from its latest save.")
    progress.add_argument("--allow_changed_base", action="store_true",
                          help="LoRA: resume, or continue --lora_pretrained_model_path, on "
                               "another base than the one the adapters were trained on (refused "
                               "otherwise: the base's fingerprint is recorded).")
    progress.add_argument("--allow_changed_dataset", action="store_true",
                          help="Resume on another dataset than the checkpoint's (e.g. "
                               "re-preprocessed with another --seq_length) from the saved data "
                               "position (refused otherwise).")
    progress.add_argument("--report_steps", type=int, default=100,
                          help="Print loss, learning rate, throughput and ETA every N steps.")
    progress.add_argument("--tensorboard_dir", default=None, help="Write TensorBoard scalars here.")
    progress.add_argument("--log_path", default=None,
                          help="Also write the run log (rank 0's lines, time-stamped) to this file.")
    progress.add_argument("--log_level", default="INFO", choices=LEVELS,
                          help="Lowest level shown on the terminal.")
    progress.add_argument("--log_file_level", default="INFO", choices=LEVELS,
                          help="Lowest level written to --log_path.")
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
    _add_lora_arguments(parser)
    add_eval_arguments(parser)
    _add_deepspeed_arguments(parser)
    return parser


# LoRA option -> LoraConfig field; unset options (None) keep the default or the saved adapter's
_LORA_OPTIONS = {"lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout",
                 "lora_target_modules": "targets", "lora_modules_to_save": "modules_to_save"}


def _add_lora_arguments(parser):
    defaults = LoraConfig()
    lora = parser.add_argument_group("LoRA")
    lora.add_argument("--use_lora", action="store_true",
                      help="Train LoRA adapters on a frozen base; saves adapter-only files.")
    continued = "or the --lora_pretrained_model_path adapter's"
    lora.add_argument("--lora_r", type=int, default=None,
                      help=f"Rank (default: {defaults.r}, {continued}).")
    lora.add_argument("--lora_alpha", type=float, default=None,
                      help=f"The update is alpha/r * B A (default: {defaults.alpha:g}, "
                           f"{continued}).")
    lora.add_argument("--lora_dropout", type=float, default=None,
                      help=f"Dropout on the adapters' input (default: {defaults.dropout:g}, "
                           f"{continued}).")
    lora.add_argument("--lora_target_modules", default=None,
                      help=f"Comma-separated, from {','.join(TARGETS)} (default: all, "
                           f"{continued}); encoder-decoder configs (T5) also "
                           "cross_q,cross_k,cross_v,cross_o (the decoder's cross-attention).")
    lora.add_argument("--lora_modules_to_save", default=None,
                      help=f"Comma-separated, from {','.join(MODULES_TO_SAVE)}: trained whole "
                           f"(e.g. after a vocabulary extension) (default: none, {continued}).")
    lora.add_argument("--lora_pretrained_model_path", default=None,
                      help="An adapter to continue from (ours or a PEFT folder).")


def lora_config(args, saved=None):
    """The LoraConfig of ``--use_lora``: defaults, else the adapter continued from
    (``saved``), overridden by the options given; an option that contradicts the saved
    adapter's shape or scaling is an error (only the dropout may change)."""
    config = saved or LoraConfig()
    given = {}
    for option, field in _LORA_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        given[field] = parse_names(value) if field in ("targets", "modules_to_save") else value
        if saved is not None and field != "dropout" and given[field] != getattr(saved, field):
            raise TrainingError(f"--{option} {value}, but --lora_pretrained_model_path "
                                f"{args.lora_pretrained_model_path} has {field} "
                                f"{getattr(saved, field)}")
    config = dataclasses.replace(config, **given)
    labels = {field: f"--{option}" for option, field in _LORA_OPTIONS.items()}
    return config.check(lambda field: labels[field])


def _add_deepspeed_arguments(parser):
    """--deepspeed/--deepspeed_config, from DeepSpeed itself when it is installed."""
    before_deepspeed_import()
    try:
        import deepspeed
    except ImportError:
        group = parser.add_argument_group("DeepSpeed")
        group.add_argument("--deepspeed", action="store_true")
        group.add_argument("--deepspeed_config", default=None)
        return
    deepspeed.add_config_arguments(parser)


def _lr_decay(text):
    """A float, as in TencentPretrain; a schedule name gets a pointer to --scheduler."""
    if text in SCHEDULERS:
        raise argparse.ArgumentTypeError(f"{text!r} is a schedule: use --scheduler {text} "
                                         "(--lr_decay is the polynomial power, a float)")
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def check_args(args):
    """Option-only checks (no file is read here beyond existence)."""
    positive = ["total_steps", "save_checkpoint_steps", "save_total_limit", "report_steps",
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
    if os.path.isdir(args.output_model_path):
        raise TrainingError(f"--output_model_path {args.output_model_path} is a folder; it names "
                            "files: OUTPUT-STEP weights, OUTPUT.checkpoints/, and OUTPUT itself "
                            "for the final weights")
    if os.path.isfile(args.dataset_path):
        raise TrainingError(f"--dataset_path {args.dataset_path} is a file (a TencentPretrain "
                            "dataset.pt?); datasets here are the folders preprocess.py writes: "
                            "re-run preprocess.py with this --dataset_path")
    for name in ["dataset_path", "resume_from_checkpoint"]:
        path = getattr(args, name)
        if path is not None and not os.path.isdir(path):
            raise TrainingError(f"--{name} {path}: no such folder")
    if args.deepspeed and not args.deepspeed_config:
        raise TrainingError("--deepspeed needs --deepspeed_config")
    if args.tensorboard_dir:
        require("tensorboard", "tensorboard", "--tensorboard_dir")
    if args.enable_zero3 and not args.deepspeed:
        raise TrainingError("--enable_zero3 needs --deepspeed (ZeRO-3 is DeepSpeed's)")
    _check_lora_args(args)
    check_eval_args(args)
    ranks = Launch.from_environment().world_size
    if not args.deepspeed and ranks > 1:
        raise TrainingError(f"{ranks} ranks were launched without --deepspeed; "
                            "add --deepspeed --deepspeed_config, or run one process")
    return args


def _check_lora_args(args):
    given = [f"--{o}" for o in [*_LORA_OPTIONS, "lora_pretrained_model_path"]
             if getattr(args, o) is not None]
    if not args.use_lora:
        if given:
            raise TrainingError(f"{given[0]} needs --use_lora")
        return
    if args.lora_pretrained_model_path:
        if not args.pretrained_model_path:
            raise TrainingError("--lora_pretrained_model_path needs --pretrained_model_path, the "
                                "base model the adapter was trained on")
        if not os.path.exists(args.lora_pretrained_model_path) and not os.path.isfile(
                adapter_files(args.lora_pretrained_model_path)[0]):
            raise TrainingError(f"--lora_pretrained_model_path "
                                f"{args.lora_pretrained_model_path}: no such file or folder")
    else:
        lora_config(args)  # bad values fail now, before any file is read
