"""TencentPretrain-style pre-training and instruction tuning for LLaMA-family models.

    import tencentpretrain
    model = tencentpretrain.load_model("models/llama/7b_config.json", "llama-7b.bin")
    logits = model(input_ids)  # [batch, seq, vocab]
"""
from tencentpretrain.config import ConfigError, ModelConfig, load_config
from tencentpretrain.model_builder import build_model, load_model
from tencentpretrain.utils.weights import WeightsError

__all__ = ["ConfigError", "ModelConfig", "WeightsError", "build_model", "load_config",
           "load_model"]
