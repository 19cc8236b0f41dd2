"""Convert a LoRA adapter saved by ``pretrain.py --use_lora`` into a Hugging Face PEFT
folder (adapter_config.json + adapter_model.safetensors) that
``peft.PeftModel.from_pretrained(LlamaForCausalLM, DIR)`` loads onto the base model
exported by scripts/convert_tencentpretrain_to_llama_huggingface.py."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.adapters import check_adapter, read_adapter  # noqa: E402
from tencentpretrain.config import load_config  # noqa: E402
from tencentpretrain.convert import add_export_options  # noqa: E402
from tencentpretrain.convert.hf_llama import check_output_folder  # noqa: E402
from tencentpretrain.convert.peft_lora import PEFT_CONFIG, write_peft_dir  # noqa: E402
from tencentpretrain.utils.cli import run  # noqa: E402
from tencentpretrain.utils.weights import WeightsError  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_export_options(parser, input_help="Our adapter: NAME.safetensors (NAME.json beside it).",
                       config_help="Model config JSON of the base.",
                       output_help="Output PEFT folder.")
    args = parser.parse_args(argv)
    run(lambda: convert(args))


def convert(args):
    config = load_config(args.config_path)
    if os.path.isdir(args.input_model_path):
        raise WeightsError(f"--input_model_path {args.input_model_path} is a folder (already a "
                           "PEFT adapter?); expected NAME.safetensors from pretrain.py --use_lora")
    check_output_folder(args.output_model_path)
    lora, adapter = read_adapter(args.input_model_path, config)
    check_adapter(config, lora, adapter, args.input_model_path)
    write_peft_dir(args.output_model_path, lora, adapter, config)
    print(f"wrote {args.output_model_path}/{PEFT_CONFIG} and adapter_model.safetensors")


if __name__ == "__main__":
    main()
