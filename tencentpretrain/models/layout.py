"""The model's shape, in one place: where its parts are, what its checkpoint tensors are
called, and how those names map to Hugging Face, Meta and PEFT layouts per model family.

Everything outside the model code (trainer, checkpointing, LoRA, metrics, vocabulary
extension, converters, model_builder) reaches a part or spells a tensor name through here.
Our names are TencentPretrain's (``embedding.word.embedding.weight``,
``encoder.transformer.N.self_attn.linear_layers.0.weight``, ...), so its LLaMA checkpoints
and every checkpoint written by this project load unchanged.

Name maps follow torchtitan's ``state_dict_adapter.py``: one map per family behind
``to_hf`` / ``from_hf``. Our q/k rows are in Meta's rotary order (adjacent pairs); HF
permutes q/k rows (weights and biases) so rotary acts on the two halves of each head;
``to_hf_rows`` and ``from_hf_rows`` are exact inverses.
"""
from tencentpretrain.utils.weights import WeightsError

# ---- our checkpoint names ----
EMBEDDING_TABLE = "embedding.word.embedding"  # module paths
FINAL_NORM = "encoder.layer_norm"
OUTPUT_LAYER = "target.lm.output_layer"
LAYERS = "encoder.transformer"  # layer N is LAYERS.N
EMBEDDING = f"{EMBEDDING_TABLE}.weight"  # tensor names
NORM = f"{FINAL_NORM}.weight"
OUTPUT = f"{OUTPUT_LAYER}.weight"

# The linear layers of one transformer layer, by short name (LoRA targets).
LINEARS = {
    "q": "self_attn.linear_layers.0",
    "k": "self_attn.linear_layers.1",
    "v": "self_attn.linear_layers.2",
    "o": "self_attn.final_linear",
    "gate": "feed_forward.linear_gate",
    "up": "feed_forward.linear_1",
    "down": "feed_forward.linear_2",
}
# Whole modules that can be trained beside adapters (e.g. after a vocabulary extension).
WHOLE_MODULES = {"embedding": EMBEDDING_TABLE, "output": OUTPUT_LAYER}


def layer_name(i, name=""):
    """Our name of ``name`` inside layer ``i`` (the layer's own path without ``name``)."""
    return f"{LAYERS}.{i}.{name}" if name else f"{LAYERS}.{i}"


# ---- part accessors (through the encoder interface, encoders/base.py) ----

def stacks(model):
    """The layer stacks in forward order: the encoder, then the decoder when there is one."""
    decoder = getattr(model, "decoder", None)
    return [model.encoder] + ([decoder] if decoder is not None else [])


def layers(model):
    """Every repeated layer, encoder's then decoder's."""
    return [layer for stack in stacks(model) for layer in stack.layers()]


def named_layers(model):
    """[(module path, layer)] of ``layers(model)``: the paths come from the model itself."""
    paths = {id(module): path for path, module in model.named_modules()}
    return [(paths[id(layer)], layer) for layer in layers(model)]


def final_norm(model):
    """The norm before the target (the last stack's), or None (post-norm configs)."""
    return stacks(model)[-1].final_norm()


def embedding(model):
    return model.embedding


def embedding_table(model):
    """The token embedding (``nn.Embedding``)."""
    return model.get_submodule(EMBEDDING_TABLE)


def output_layer(model):
    """The LM head (``nn.Linear``, or a wrapper such as a LoRA layer)."""
    return model.get_submodule(OUTPUT_LAYER)


def tie_weights(model):
    output_layer(model).weight = embedding_table(model).weight


def blocks(model):
    """Units that hold every parameter once, in ``model.modules()`` order: the embedding,
    each layer and final norm of each stack, the targets (ZeRO-3 initialises one at a time)."""
    parts = [model.embedding]
    for stack in stacks(model):
        parts += [*stack.shared_modules(), *stack.layers(), stack.final_norm()]
    return [part for part in parts + [model.target] if part is not None]


def enable_activation_checkpointing(model, layers_per_checkpoint, checkpoint_fn=None):
    for stack in stacks(model):
        stack.enable_activation_checkpointing(layers_per_checkpoint, checkpoint_fn)


# ---- Hugging Face LLaMA family (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM) ----

_HF_LAYER = {  # ours (per layer) -> HF (per layer)
    f"{LINEARS['q']}.weight": "self_attn.q_proj.weight",
    f"{LINEARS['k']}.weight": "self_attn.k_proj.weight",
    f"{LINEARS['v']}.weight": "self_attn.v_proj.weight",
    f"{LINEARS['o']}.weight": "self_attn.o_proj.weight",
    f"{LINEARS['gate']}.weight": "mlp.gate_proj.weight",
    f"{LINEARS['up']}.weight": "mlp.up_proj.weight",
    f"{LINEARS['down']}.weight": "mlp.down_proj.weight",
    "layer_norm_1.weight": "input_layernorm.weight",
    "layer_norm_2.weight": "post_attention_layernorm.weight",
}
_HF_QKV_BIAS = {  # configs with "qkv_bias": true (Qwen2)
    f"{LINEARS['q']}.bias": "self_attn.q_proj.bias",
    f"{LINEARS['k']}.bias": "self_attn.k_proj.bias",
    f"{LINEARS['v']}.bias": "self_attn.v_proj.bias",
}
_HF_GLOBAL = {EMBEDDING: "model.embed_tokens.weight", NORM: "model.norm.weight",
              OUTPUT: "lm_head.weight"}
_HF_LAYER_KEY = "model.layers.{}.{}"
# What an HF checkpoint may hold that our model recomputes instead (old rotary buffers).
_HF_RECOMPUTED = ("rotary_emb.inv_freq",)


def to_hf_rows(w, heads):
    """Meta's rotary row order -> HF's, for a q/k weight [rows, cols] or bias [rows]."""
    return w.unflatten(0, (heads, -1, 2)).transpose(1, 2).reshape(w.shape)


def from_hf_rows(w, heads):
    return w.unflatten(0, (heads, 2, -1)).transpose(1, 2).reshape(w.shape)


def row_heads(our_name, config):
    """Heads whose rows HF permutes for this tensor of a layer (q and k, weights, biases and
    LoRA B), or None."""
    if our_name.startswith(LINEARS["q"] + "."):
        return config.heads_num
    if our_name.startswith(LINEARS["k"] + "."):
        return config.kv_heads_num
    return None


class HFLayout:
    """One HF family's tensor names, behind ``to_hf`` / ``from_hf``."""

    def __init__(self, family, layer_map):
        self.family, self.layer_map = family, layer_map

    def pairs(self, config):
        """(our name, HF name, heads to permute or None) of every layer tensor."""
        for i in range(config.layers_num):
            for name, hf_name in self.layer_map.items():
                yield layer_name(i, name), _HF_LAYER_KEY.format(i, hf_name), row_heads(name, config)

    def to_hf(self, state, config):
        hf = {hf_name: state[name] for name, hf_name in _HF_GLOBAL.items() if name in state}
        if config.tie_weights:
            hf.pop(_HF_GLOBAL[OUTPUT], None)
        for name, hf_name, heads in self.pairs(config):
            tensor = state[name]
            hf[hf_name] = (to_hf_rows(tensor, heads) if heads else tensor).contiguous()
        return hf

    def from_hf(self, hf_state, config, source="Hugging Face checkpoint"):
        """Our state dict from an HF one; a tensor this map does not place is an error.
        Unpermuted tensors are shared, not copied, so bf16 stays bf16 and memory stays ~1x."""
        ours = {name: hf_state[hf_name] for name, hf_name in _HF_GLOBAL.items()
                if hf_name in hf_state}
        used = {hf_name for name, hf_name in _HF_GLOBAL.items() if hf_name in hf_state}
        if config.tie_weights:
            ours.pop(OUTPUT, None)
        elif OUTPUT not in ours:
            raise WeightsError(f"{source} has no {_HF_GLOBAL[OUTPUT]}, and the config does not "
                               "tie it to the embedding")
        for name, hf_name, heads in self.pairs(config):
            if hf_name not in hf_state:
                raise WeightsError(f"{source} has no tensor {hf_name}")
            tensor = hf_state[hf_name]
            ours[name] = (from_hf_rows(tensor, heads) if heads else tensor).contiguous()
            used.add(hf_name)
        unknown = sorted(k for k in hf_state if k not in used and not k.endswith(_HF_RECOMPUTED))
        if unknown:
            raise WeightsError(f"{source}: tensor {unknown[0]} has no place in the converted "
                               f"model ({len(unknown)} such tensors); refusing to drop it")
        return ours


# ---- Hugging Face T5 family (T5ForConditionalGeneration: T5, T5 v1.1, Flan-T5) ----

DECODER_LAYERS = "decoder.transformer_decoder"  # decoder layer N is DECODER_LAYERS.N
DECODER_NORM = "decoder.layer_norm.weight"
ENCODER_POSITION_BIAS = "encoder.relative_pos_emb.relative_attention_bias.weight"
DECODER_POSITION_BIAS = "decoder.self_pos_emb.relative_attention_bias.weight"
# Our cross-attention linears (decoder layers), by short name.
CROSS_LINEARS = {"q": "context_attn.linear_layers.0", "k": "context_attn.linear_layers.1",
                 "v": "context_attn.linear_layers.2", "o": "context_attn.final_linear"}


def decoder_layer_name(i, name=""):
    return f"{DECODER_LAYERS}.{i}.{name}" if name else f"{DECODER_LAYERS}.{i}"


_T5_ATTENTION = {"q": "q", "k": "k", "v": "v", "o": "o"}
_T5_FFN = {"dense": {"up": "wi", "down": "wo"}, "gated": {"gate": "wi_0", "up": "wi_1", "down": "wo"}}
_T5_GLOBAL = {EMBEDDING: "shared.weight", NORM: "encoder.final_layer_norm.weight",
              DECODER_NORM: "decoder.final_layer_norm.weight", OUTPUT: "lm_head.weight",
              ENCODER_POSITION_BIAS:
                  "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
              DECODER_POSITION_BIAS:
                  "decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"}
# Aliases of shared.weight that HF state dicts may hold, and a tensor old HF T5 checkpoints
# carry that no model reads (transformers ignores it too).
_T5_ALIASES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
_T5_UNUSED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)


class T5HFLayout:
    """HF T5 names (``encoder.block.N.layer.M.*``) <-> ours; no rows permuted (no rotary)."""
    family = "t5"

    def pairs(self, config):
        """(our name, HF name) of every tensor of ``config``'s model, output layer included."""
        ffn = _T5_FFN[config.feed_forward]
        for ours, hf in _T5_GLOBAL.items():
            if (config.tie_weights and ours == OUTPUT) or (
                    not config.relative_position_embedding and hf.endswith("_bias.weight")):
                continue
            yield ours, hf
        for i in range(config.layers_num):
            hf = f"encoder.block.{i}.layer"
            for short, name in _T5_ATTENTION.items():
                yield layer_name(i, f"{LINEARS[short]}.weight"), f"{hf}.0.SelfAttention.{name}.weight"
            yield layer_name(i, "layer_norm_1.weight"), f"{hf}.0.layer_norm.weight"
            for short, name in ffn.items():
                yield layer_name(i, f"{LINEARS[short]}.weight"), f"{hf}.1.DenseReluDense.{name}.weight"
            yield layer_name(i, "layer_norm_2.weight"), f"{hf}.1.layer_norm.weight"
        for i in range(config.decoder_layers):
            hf = f"decoder.block.{i}.layer"
            for short, name in _T5_ATTENTION.items():
                yield (decoder_layer_name(i, f"{LINEARS[short]}.weight"),
                       f"{hf}.0.SelfAttention.{name}.weight")
                yield (decoder_layer_name(i, f"{CROSS_LINEARS[short]}.weight"),
                       f"{hf}.1.EncDecAttention.{name}.weight")
            yield decoder_layer_name(i, "layer_norm_1.weight"), f"{hf}.0.layer_norm.weight"
            yield decoder_layer_name(i, "layer_norm_2.weight"), f"{hf}.1.layer_norm.weight"
            for short, name in ffn.items():
                yield (decoder_layer_name(i, f"{LINEARS[short]}.weight"),
                       f"{hf}.2.DenseReluDense.{name}.weight")
            yield decoder_layer_name(i, "layer_norm_3.weight"), f"{hf}.2.layer_norm.weight"

    def to_hf(self, state, config):
        return {hf: state[ours].contiguous() for ours, hf in self.pairs(config)}

    def from_hf(self, hf_state, config, source="Hugging Face checkpoint"):
        ours, used = {}, set()
        for name, hf_name in self.pairs(config):
            if hf_name not in hf_state:
                if name == OUTPUT:
                    raise WeightsError(f"{source} has no {hf_name}, and the config does not "
                                       "tie it to the embedding")
                raise WeightsError(f"{source} has no tensor {hf_name}")
            ours[name] = hf_state[hf_name]
            used.add(hf_name)
        if config.tie_weights:
            used.add(_T5_GLOBAL[OUTPUT])  # an alias of shared.weight where present
        unknown = sorted(k for k in hf_state
                         if k not in used and k not in _T5_ALIASES and k not in _T5_UNUSED)
        if unknown:
            raise WeightsError(f"{source}: tensor {unknown[0]} has no place in the converted "
                               f"model ({len(unknown)} such tensors); refusing to drop it")
        return ours


HF_FAMILIES = {"llama": HFLayout("llama", _HF_LAYER),
               "mistral": HFLayout("mistral", _HF_LAYER),
               "qwen2": HFLayout("qwen2", {**_HF_LAYER, **_HF_QKV_BIAS}),
               "t5": T5HFLayout()}


def hf_family_of(config):
    """The HF family whose names fit ``config`` (hf_llama.hf_family refuses what none fits)."""
    if config.decoder:
        return "t5"
    if config.qkv_bias:
        return "qwen2"
    return "mistral" if config.sliding_window else "llama"


def hf_layout(config):
    return HF_FAMILIES[hf_family_of(config)]


def to_hf(state, config):
    return hf_layout(config).to_hf(state, config)


def from_hf(hf_state, config, source="Hugging Face checkpoint"):
    return hf_layout(config).from_hf(hf_state, config, source)


def hf_module(our_module):
    """HF module path of one of our modules (a layer's linear or a whole module), e.g.
    ``self_attn.linear_layers.0`` -> ``self_attn.q_proj``."""
    return {**_HF_LAYER, **_HF_GLOBAL}[f"{our_module}.weight"].removesuffix(".weight")


# ---- PEFT adapters (``adapter_model.safetensors`` on the HF model) ----

PEFT_PREFIX = "base_model.model."
PEFT_TARGETS = {name: hf_module(path).rpartition(".")[2] for name, path in LINEARS.items()}
PEFT_MODULES_TO_SAVE = {name: hf_module(path).rpartition(".")[2]
                        for name, path in WHOLE_MODULES.items()}


def peft_pairs(targets, modules_to_save, config):
    """(our name, PEFT name, heads to permute or None) of every tensor of an adapter on
    ``targets`` (LINEARS names) with ``modules_to_save`` (WHOLE_MODULES names). Since
    delta = B A, HF's q/k row permutation applies to B (A, the input side, is unchanged)."""
    for i in range(config.layers_num):
        for target in targets:
            ours = layer_name(i, LINEARS[target])
            peft = PEFT_PREFIX + _HF_LAYER_KEY.format(i, hf_module(LINEARS[target]))
            yield f"{ours}.lora_A", f"{peft}.lora_A.weight", None
            yield f"{ours}.lora_B", f"{peft}.lora_B.weight", row_heads(LINEARS[target] + ".", config)
    for name in modules_to_save:
        ours = f"{WHOLE_MODULES[name]}.weight"
        yield ours, PEFT_PREFIX + _HF_GLOBAL[ours], None


# ---- Meta's original checkpoints (params.json + consolidated.NN.pth) ----

# Meta name -> (our name, dimension model-parallel shards split it along; None = replicated)
_META_GLOBAL = {
    "tok_embeddings.weight": (EMBEDDING, 1),
    "norm.weight": (NORM, None),
    "output.weight": (OUTPUT, 0),
}
_META_LAYER = {  # per layer: layers.N.<meta> -> LAYERS.N.<ours>
    "attention.wq.weight": (f"{LINEARS['q']}.weight", 0),
    "attention.wk.weight": (f"{LINEARS['k']}.weight", 0),
    "attention.wv.weight": (f"{LINEARS['v']}.weight", 0),
    "attention.wo.weight": (f"{LINEARS['o']}.weight", 1),
    "feed_forward.w1.weight": (f"{LINEARS['gate']}.weight", 0),
    "feed_forward.w3.weight": (f"{LINEARS['up']}.weight", 0),
    "feed_forward.w2.weight": (f"{LINEARS['down']}.weight", 1),
    "attention_norm.weight": ("layer_norm_1.weight", None),
    "ffn_norm.weight": ("layer_norm_2.weight", None),
}
META_IGNORED = {"rope.freqs"}  # recomputed from rope_theta


def from_meta_name(meta_name):
    """(our name, split dimension) of a Meta tensor name; WeightsError if unknown."""
    if meta_name in _META_GLOBAL:
        return _META_GLOBAL[meta_name]
    prefix, _, rest = meta_name.partition(".")
    index, _, name = rest.partition(".")
    if prefix == "layers" and index.isdigit() and name in _META_LAYER:
        ours, dim = _META_LAYER[name]
        return layer_name(int(index), ours), dim
    raise WeightsError(f"unknown tensor {meta_name} in the Meta checkpoint")
