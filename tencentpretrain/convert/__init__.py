"""Checkpoint conversion between our layout and Hugging Face / Meta layouts."""

import json
import os

from tencentpretrain.config import save_config
from tencentpretrain.utils.files import write_text_atomic
from tencentpretrain.utils.weights import save_state_dict_file


def add_conversion_options(parser, input_help):
    """The options of every script that converts a checkpoint into our layout: the checkpoint
    (``input_help`` says what kind) and where ``write_converted`` writes."""
    parser.add_argument("--input_model_path", required=True, help=input_help)
    parser.add_argument("--output_model_path", required=True,
                        help="Output weights: .bin (torch zip state dict) or .safetensors.")
    parser.add_argument("--output_config_path", default=None,
                        help="Also write the matching model config JSON here.")


def add_export_options(parser, input_help, config_help, output_help="Output folder."):
    """The options of every script that exports our checkpoint to Hugging Face's layout: the
    checkpoint, its model config and the folder to write."""
    parser.add_argument("--input_model_path", required=True, help=input_help)
    parser.add_argument("--config_path", required=True, help=config_help)
    parser.add_argument("--output_model_path", required=True, help=output_help)


def write_converted(state, config, output_model_path, output_config_path=None):
    """Write converted weights (atomically) and, if asked, the matching model config."""
    save_state_dict_file(state, output_model_path)
    if output_config_path:
        save_config(config, output_config_path)
    print(f"wrote {len(state)} tensors to {output_model_path}")


def write_json_file(path, data):
    """An HF JSON file (config.json, tokenizer_config.json, ...) as transformers writes them:
    indented, non-ASCII text as is (a chat template), a final newline; written atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def write_hf_folder(folder, hf_config, hf_state, written=()):
    """The last step of an export: config.json and model.safetensors into ``folder``, then the
    one line naming every file written (``written``: those already there, tokenizer files)."""
    os.makedirs(folder, exist_ok=True)
    write_json_file(os.path.join(folder, "config.json"), hf_config)
    save_state_dict_file(hf_state, os.path.join(folder, "model.safetensors"))
    print(f"wrote {folder}: {', '.join(['config.json', 'model.safetensors', *written])}")
