"""Fold a LoRA adapter into its base model: W + (alpha / r) * B A for every target, and the
adapter's modules_to_save tensors in place of the base's. The result is a plain
TencentPretrain checkpoint (no LoRA needed to use it), in the base weights' dtype."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.adapters import (base_fingerprint, check_adapter, other_base,  # noqa: E402
                                      read_adapter)
from tencentpretrain.config import load_config  # noqa: E402
from tencentpretrain.errors import UserError  # noqa: E402
from tencentpretrain.layers.lora import MODULES_TO_SAVE, merge_into_state_dict  # noqa: E402
from tencentpretrain.model_builder import build_model, check_state_dict, vocab_size_of  # noqa: E402
from tencentpretrain.utils.cli import run  # noqa: E402
from tencentpretrain.utils.weights import load_state_dict_file, save_state_dict_file  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base_model_path", required=True, help="Base weights (.bin/.safetensors).")
    parser.add_argument("--lora_model_path", required=True,
                        help="Adapter: pretrain.py --use_lora output (NAME.safetensors) or a "
                             "PEFT folder.")
    parser.add_argument("--config_path", required=True, help="Model config JSON.")
    parser.add_argument("--output_model_path", required=True,
                        help="Merged weights (.safetensors by extension, else torch).")
    parser.add_argument("--allow_other_base", action="store_true",
                        help="Merge even when the adapter records another base than "
                             "--base_model_path (its fingerprint differs: another model, or one "
                             "with an adapter already merged in).")
    args = parser.parse_args(argv)
    run(lambda: merge(args))


def merge(args):
    config = load_config(args.config_path)
    state = load_state_dict_file(args.base_model_path)
    vocab_size = vocab_size_of(state, args.base_model_path)
    check_state_dict(build_model(config, vocab_size, device="meta"), state, args.base_model_path)
    lora, adapter = read_adapter(args.lora_model_path, config)
    check_adapter(config, lora, adapter, args.lora_model_path, vocab_size)
    other = other_base(args.lora_model_path, base_fingerprint(state, config.tie_weights),
                       f"--base_model_path {args.base_model_path}")
    if other and not args.allow_other_base:
        raise UserError(f"{other}; pass the base it was trained on, or --allow_other_base")
    if other:
        print(f"warning: {other}; merging anyway (--allow_other_base)")
    save_state_dict_file(merge_into_state_dict(state, adapter, lora, config),
                         args.output_model_path)
    replaced = [f"{name} ({MODULES_TO_SAVE[name]}.weight)" for name in lora.modules_to_save
                if f"{MODULES_TO_SAVE[name]}.weight" in adapter]
    print(f"wrote {args.output_model_path}: {args.base_model_path} + {args.lora_model_path} "
          f"(r {lora.r}, alpha {lora.alpha:g}, {','.join(lora.targets)}; modules_to_save "
          f"replaced: {', '.join(replaced) or 'none'})")


if __name__ == "__main__":
    main()
