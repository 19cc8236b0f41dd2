"""TencentPretrain-style pre-training and instruction tuning for LLaMA-family models.

    import tencentpretrain
    model = tencentpretrain.load_model("models/llama/7b_config.json", "llama-7b.bin")
    logits = model(input_ids)  # [batch, seq, vocab]

The model API is imported lazily (PEP 562) so that torch-free parts such as the
preprocessor (``tencentpretrain.data`` builder workers, the tokenizer) start fast
and stay small in memory.
"""
import importlib

_LAZY = {
    "ConfigError": "tencentpretrain.config",
    "ModelConfig": "tencentpretrain.config",
    "load_config": "tencentpretrain.config",
    "build_model": "tencentpretrain.model_builder",
    "load_model": "tencentpretrain.loading",
    "load_model_and_tokenizer": "tencentpretrain.loading",
    "WeightsError": "tencentpretrain.utils.weights",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tencentpretrain' has no attribute {name!r}")
