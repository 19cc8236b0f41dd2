"""Convert a Hugging Face LLaMA-family folder (LlamaForCausalLM, Qwen2ForCausalLM,
MistralForCausalLM: see ``config.json``'s ``architectures``) into TencentPretrain weights,
and with --output_config_path the matching model config. Weights keep their dtype."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.convert import add_conversion_options, write_converted  # noqa: E402
from tencentpretrain.convert.hf_llama import (config_from_hf, hf_to_tencentpretrain,  # noqa: E402
                                              read_hf_model)
from tencentpretrain.utils.cli import run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_conversion_options(
        parser, "Hugging Face model folder (config.json + safetensors or .bin shards).")
    args = parser.parse_args(argv)

    def convert():
        config, state = read_hf_model(args.input_model_path, config_from_hf,
                                      hf_to_tencentpretrain)
        write_converted(state, config, args.output_model_path, args.output_config_path)

    run(convert)


if __name__ == "__main__":
    main()
