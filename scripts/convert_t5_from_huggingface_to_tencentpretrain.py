"""Convert a Hugging Face T5 folder (``T5ForConditionalGeneration``: T5, T5 v1.1, Flan-T5)
into TencentPretrain weights, and with --output_config_path the matching model config.
Reads model.safetensors, sharded safetensors with an index, or pytorch_model*.bin (the
LLaMA converter's reader); weights keep their dtype. Anything our model would not reproduce
(another feed_forward_proj, an is_gated_act that contradicts it, unknown tensors) is one
line, nothing written."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.config import ConfigError  # noqa: E402
from tencentpretrain.convert import write_converted  # noqa: E402
from tencentpretrain.convert.hf_llama import read_hf_config, read_hf_folder  # noqa: E402
from tencentpretrain.convert.hf_t5 import (config_from_hf, hf_to_tencentpretrain,  # noqa: E402
                                           is_t5)
from tencentpretrain.utils.cli import run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input_model_path", required=True,
                        help="Hugging Face T5 folder (config.json + safetensors or .bin shards).")
    parser.add_argument("--output_model_path", required=True,
                        help="Output weights: .bin (torch zip state dict) or .safetensors.")
    parser.add_argument("--output_config_path", default=None,
                        help="Also write the matching model config JSON here.")
    args = parser.parse_args(argv)

    def convert():
        config_file = os.path.join(args.input_model_path, "config.json")
        hf_config = read_hf_config(args.input_model_path)
        if not is_t5(hf_config):
            raise ConfigError(f"{config_file}: not a T5 config (model_type "
                              f"{hf_config.get('model_type')!r}); LLaMA-family folders convert "
                              "with scripts/convert_llama_from_huggingface_to_tencentpretrain.py")
        config = config_from_hf(hf_config, source=config_file)  # before any weight is read
        _, hf_state = read_hf_folder(args.input_model_path)
        state = hf_to_tencentpretrain(hf_state, config, source=args.input_model_path)
        write_converted(state, config, args.output_model_path, args.output_config_path)

    run(convert)


if __name__ == "__main__":
    main()
