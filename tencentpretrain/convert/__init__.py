"""Checkpoint conversion between our layout and Hugging Face / Meta layouts."""

from tencentpretrain.config import save_config
from tencentpretrain.utils.weights import save_state_dict_file


def write_converted(state, config, output_model_path, output_config_path=None):
    """Write converted weights (atomically) and, if asked, the matching model config."""
    save_state_dict_file(state, output_model_path)
    if output_config_path:
        save_config(config, output_config_path)
    print(f"wrote {len(state)} tensors to {output_model_path}")
