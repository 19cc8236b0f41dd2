"""Command-line options shared by the inference scripts, what they do with them before the
work starts, and the package's one-line error reporting (``run``)."""
import os

from tencentpretrain.loading import load_model_and_tokenizer
from tencentpretrain.tokenizer import add_tokenizer_options
from tencentpretrain.utils.cli import run

__all__ = ["add_model_options", "add_sampling_options", "load_model", "make_output_folder", "run"]


def add_model_options(parser):
    group = parser.add_argument_group("model")
    group.add_argument("--load_model_path", required=True,
                       help="Weights: .bin state dict, .safetensors, or a pretrain.py checkpoint.")
    group.add_argument("--config_path", required=True, help="Model config JSON.")
    group.add_argument("--lora_model_path", default=None,
                       help="A LoRA adapter on top of --load_model_path: pretrain.py --use_lora "
                            "output (NAME.safetensors) or a PEFT folder (adapter_config.json).")
    add_tokenizer_options(group)
    group.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda:N.")
    group.add_argument("--dtype", default="auto",
                       choices=["auto", "float32", "bfloat16", "float16"],
                       help="auto: bfloat16 (else float16) on GPU, float32 on CPU.")
    return group


def load_model(args):
    """(model, tokenizer) as the options of ``add_model_options`` name them."""
    return load_model_and_tokenizer(args.config_path, args.load_model_path, args.spm_model_path,
                                    args.device, args.dtype, args.lora_model_path,
                                    args.tokenizer_path)


def add_sampling_options(parser, top_k_default, top_k_help, greedy_flag=False):
    """The generation scripts' sampling group (``generation.SamplingOptions``); they differ in
    top_k's default, and generate_lm.py also takes --greedy."""
    group = parser.add_argument_group("sampling")
    group.add_argument("--top_k", type=int, default=top_k_default, help=top_k_help)
    group.add_argument("--top_p", type=float, default=1.0, help="Nucleus mass; 0 or 1: off.")
    group.add_argument("--temperature", type=float, default=1.0, help="0: greedy.")
    group.add_argument("--repetition_penalty", type=float, default=1.0, help="1.0: off.")
    if greedy_flag:
        group.add_argument("--greedy", action="store_true", help="Same as --top_k 1.")
    group.add_argument("--seed", type=int, default=7, help="Sampling seed.")
    return group


def make_output_folder(path, option, error):
    """Create the folder of the output file ``path`` (given as ``option``) before the slow
    model load, so an output that cannot be written fails at once, as ``error``."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        raise error(f"{option} {path}: cannot create its folder ({e.strerror})") from None

