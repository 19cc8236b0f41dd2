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

from tencentpretrain.convert import add_conversion_options, write_converted  # noqa: E402
from tencentpretrain.convert.hf_llama import read_hf_model  # noqa: E402
from tencentpretrain.convert.hf_t5 import config_from_hf, hf_to_tencentpretrain  # noqa: E402
from tencentpretrain.utils.cli import run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_conversion_options(
        parser, "Hugging Face T5 folder (config.json + safetensors or .bin shards).")
    args = parser.parse_args(argv)

    def convert():
        config, state = read_hf_model(args.input_model_path, config_from_hf,
                                      hf_to_tencentpretrain)
        write_converted(state, config, args.output_model_path, args.output_config_path)

    run(convert)


if __name__ == "__main__":
    main()
