"""A model ready to use: base weights (``model_builder.load_model``), then a LoRA adapter
on top (``adapters.load_adapter``), and the tokenizer beside them. ``model_builder`` knows
nothing of adapters; this module is where the two meet (``tencentpretrain.load_model``)."""
from tencentpretrain import model_builder
from tencentpretrain.adapters import load_adapter
from tencentpretrain.model_builder import pick_device_dtype
from tencentpretrain.tokenizer import load_tokenizer
from tencentpretrain.utils.weights import WeightsError


def load_model(config_path, model_path=None, vocab_size=None, dtype=None, device=None,
               lora_model_path=None):
    """``model_builder.load_model`` (see there), and ``lora_model_path``: a LoRA adapter
    (ours or a PEFT folder) put on top, unmerged, before the model is cast to ``dtype``.
    On the meta device only shapes are checked and no adapter is read."""
    if lora_model_path is None:
        return model_builder.load_model(config_path, model_path, vocab_size, dtype, device)
    if model_path is None:
        raise WeightsError(f"LoRA adapter {lora_model_path} needs the base model it was trained "
                           "on (model_path / --load_model_path)")
    model = model_builder.load_model(config_path, model_path, vocab_size, device=device)
    if next(model.parameters()).is_meta:
        return model
    load_adapter(model, lora_model_path)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()  # the adapter's new modules too (their dropout off)


def load_model_and_tokenizer(config_path, model_path, spm_model_path, device="auto",
                             dtype="auto", lora_model_path=None, tokenizer_path=None):
    """The checkpoint's vocabulary must be the tokenizer's: checked by load_model. The
    tokenizer: ``spm_model_path`` or ``tokenizer_path`` (tokenizer.py's load_tokenizer)."""
    tokenizer = load_tokenizer(spm_model_path, tokenizer_path)
    device, dtype = pick_device_dtype(device, dtype)
    model = load_model(config_path, model_path, vocab_size=tokenizer.vocab_size, dtype=dtype,
                       device=device, lora_model_path=lora_model_path)
    return model.eval(), tokenizer
