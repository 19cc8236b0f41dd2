"""T5's initialisation for training from scratch, as transformers' ``T5PreTrainedModel._init_weights``
(initializer_factor 1): embedding N(0, 1); untied output layer N(0, 1); attention q
N(0, (d_model * d_kv) ** -0.5), k and v N(0, d_model ** -0.5), o N(0, (heads * d_kv) ** -0.5);
feed-forward input (wi / wi_0 / wi_1) N(0, d_model ** -0.5), output (wo) N(0, d_ff ** -0.5);
relative position bias N(0, d_model ** -0.5); norms 1; biases (none in T5) 0.

Modules are recognised by their path inside ``root`` (the layout's names), so the same rule
applies to the whole model and to one block of it (ZeRO-3 initialises block by block).
"""
import torch
import torch.nn as nn


def is_t5_config(config):
    return bool(config.decoder and config.relative_position_embedding
                and config.remove_attention_scale)


def _std(path, config):
    d_model, d_ff = config.hidden_size, config.feedforward_size
    inner = config.heads_num * config.head_dim
    last = path.rpartition(".")[2]
    if path.endswith("linear_layers.0"):  # q (self- and cross-attention)
        return (d_model * config.head_dim) ** -0.5
    if path.endswith(("linear_layers.1", "linear_layers.2")):  # k, v
        return d_model ** -0.5
    if last == "final_linear":  # o
        return inner ** -0.5
    if last in ("linear_1", "linear_gate"):  # wi / wi_0, wi_1
        return d_model ** -0.5
    if last == "linear_2":  # wo
        return d_ff ** -0.5
    if last == "relative_attention_bias":
        return d_model ** -0.5
    return 1.0  # the shared embedding, an untied output layer


@torch.no_grad()
def init_t5_weights(root, config):
    for path, module in root.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=_std(path, config))
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for name, param in root.named_parameters():
        if "layer_norm" in name:
            nn.init.ones_(param) if name.endswith("weight") else nn.init.zeros_(param)
