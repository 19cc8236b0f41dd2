"""Convert Meta's original LLaMA checkpoint (params.json + consolidated.NN.pth, any number
of model-parallel shards) into a TencentPretrain weights file and model config."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.convert import add_conversion_options, write_converted  # noqa: E402
from tencentpretrain.convert.meta_llama import load_meta_checkpoint  # noqa: E402
from tencentpretrain.utils.cli import run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_conversion_options(parser, "Meta checkpoint folder: params.json and consolidated.NN.pth.")
    parser.add_argument("--max_seq_length", type=int, default=2048,
                        help="Context length for the config (params.json does not hold it): "
                             "2048 for LLaMA 1, 4096 for LLaMA 2.")
    args = parser.parse_args(argv)

    def convert():
        config, state = load_meta_checkpoint(args.input_model_path, args.max_seq_length)
        write_converted(state, config, args.output_model_path, args.output_config_path)

    run(convert)


if __name__ == "__main__":
    main()
