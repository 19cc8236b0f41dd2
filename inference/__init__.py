"""Command-line options shared by the inference scripts, and the package's one-line error
reporting (``run``)."""
from tencentpretrain.tokenizer import add_tokenizer_options
from tencentpretrain.utils.cli import run

__all__ = ["add_model_options", "run"]


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

