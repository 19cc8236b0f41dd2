"""Convert a Hugging Face LLaMA-family folder (LlamaForCausalLM, Qwen2ForCausalLM,
MistralForCausalLM: see ``config.json``'s ``architectures``) into TencentPretrain weights,
and with --output_config_path the matching model config. Weights keep their dtype."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.convert import write_converted  # noqa: E402
from tencentpretrain.convert.hf_llama import (config_from_hf, hf_to_tencentpretrain,  # noqa: E402
                                              read_hf_config, read_hf_folder)
from tencentpretrain.utils.cli import run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--input_model_path", required=True,
                        help="Hugging Face model folder (config.json + safetensors or .bin shards).")
    parser.add_argument("--output_model_path", required=True,
                        help="Output weights: .bin (torch zip state dict) or .safetensors.")
    parser.add_argument("--output_config_path", default=None,
                        help="Also write the matching model config JSON here.")
    args = parser.parse_args(argv)

    def convert():
        config_file = os.path.join(args.input_model_path, "config.json")
        # the config is checked before any weight is read: a refusal costs nothing
        config = config_from_hf(read_hf_config(args.input_model_path), source=config_file)
        _, hf_state = read_hf_folder(args.input_model_path)
        state = hf_to_tencentpretrain(hf_state, config, source=args.input_model_path)
        write_converted(state, config, args.output_model_path, args.output_config_path)

    run(convert)


if __name__ == "__main__":
    main()
