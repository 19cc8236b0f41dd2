"""The model's shape has one owner (models/layout.py): the encoder interface, the name maps
against the names checkpoints were written with before it, and the registries as
extension points (an embedding, an encoder, a decoder and a target registered at run time)."""
import os
import re
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import tencentpretrain
from tencentpretrain.config import ConfigError, config_from_dict, load_config
from tencentpretrain.decoders import str2decoder
from tencentpretrain.embeddings import str2embedding
from tencentpretrain.encoders import Encoder, TransformerEncoder, str2encoder
from tencentpretrain.layers.lora import LoraConfig, inject_lora
from tencentpretrain.model_builder import build_model
from tencentpretrain.models import layout
from tencentpretrain.targets import str2target
from tencentpretrain.training import checkpointing as ckpt
from tencentpretrain.utils.weights import save_state_dict_file
from tests.conftest import ROOT

TINY = os.path.join(ROOT, "models/llama/tiny_config.json")
VOCAB = 96
IDS = torch.tensor([[1, 17, 50, 3, 9, 42, 7, 88], [1, 5, 6, 7, 8, 9, 10, 11]])

# Checkpoint names as every file written before models/layout.py spelled them: the test
# keeps them literal, so a rename anywhere would show here.
OLD_GLOBAL = ["embedding.word.embedding.weight", "encoder.layer_norm.weight",
              "target.lm.output_layer.weight"]
OLD_LAYER = ["self_attn.linear_layers.0.weight", "self_attn.linear_layers.1.weight",
             "self_attn.linear_layers.2.weight", "self_attn.final_linear.weight",
             "feed_forward.linear_gate.weight", "feed_forward.linear_1.weight",
             "feed_forward.linear_2.weight", "layer_norm_1.weight", "layer_norm_2.weight"]
OLD_HF_LAYER = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
                "mlp.down_proj.weight", "input_layernorm.weight",
                "post_attention_layernorm.weight"]
OLD_HF_GLOBAL = ["model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"]
OLD_META_LAYER = ["attention.wq.weight", "attention.wk.weight", "attention.wv.weight",
                  "attention.wo.weight", "feed_forward.w1.weight", "feed_forward.w3.weight",
                  "feed_forward.w2.weight", "attention_norm.weight", "ffn_norm.weight"]
OLD_META_DIMS = [0, 0, 0, 1, 0, 0, 1, None, None]
OLD_META_GLOBAL = {"tok_embeddings.weight": (OLD_GLOBAL[0], 1), "norm.weight": (OLD_GLOBAL[1], None),
                   "output.weight": (OLD_GLOBAL[2], 0)}


def old_names(layers_num, qkv_bias=False):
    names = [f"encoder.transformer.{i}.{n}" for i in range(layers_num) for n in OLD_LAYER]
    if qkv_bias:
        names += [f"encoder.transformer.{i}.self_attn.linear_layers.{j}.bias"
                  for i in range(layers_num) for j in range(3)]
    return set(OLD_GLOBAL) | set(names)


def random_state(names_shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in names_shapes.items()}


def family_config(family, **extra):
    raw = dict(load_config(TINY).__dict__)
    raw.pop("source")
    raw.update({"llama": {}, "qwen2": {"qkv_bias": True}, "mistral": {"sliding_window": 5},
                "tied": {"tie_weights": True}}[family], **extra)
    return config_from_dict(raw, source=f"<{family}>")


# ---- the encoder interface ----

def test_transformer_encoder_implements_the_interface():
    model = build_model(TINY, VOCAB)
    encoder = model.encoder
    assert isinstance(encoder, Encoder) and isinstance(encoder, TransformerEncoder)
    assert list(encoder.layers()) == list(encoder.transformer)
    assert encoder.final_norm() is encoder.layer_norm
    assert layout.layers(model) == list(encoder.transformer)
    assert [path for path, _ in layout.named_layers(model)] == ["encoder.transformer.0",
                                                                "encoder.transformer.1"]
    assert layout.final_norm(model) is encoder.layer_norm
    assert layout.embedding_table(model) is model.embedding.word.embedding
    assert layout.output_layer(model) is model.target.lm.output_layer
    assert [b for b in layout.blocks(model)] == [model.embedding, *encoder.transformer,
                                                 encoder.layer_norm, model.target]
    with pytest.raises(NotImplementedError):
        Encoder().layers()
    assert Encoder().final_norm() is None


def test_activation_checkpointing_through_the_interface_keeps_loss_and_grads():
    torch.manual_seed(0)
    model = build_model(TINY, VOCAB)
    model.init_weights()
    labels = torch.roll(IDS, -1, 1)

    def loss_and_grads():
        model.zero_grad()
        loss, _ = model(IDS, labels)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    plain = loss_and_grads()
    layout.enable_activation_checkpointing(model, 1)
    assert model.encoder.checkpointing()
    recomputed = loss_and_grads()
    assert torch.equal(plain[0], recomputed[0])
    assert all(torch.equal(a, b) for a, b in zip(plain[1], recomputed[1]))
    with torch.no_grad():
        assert not model.encoder.checkpointing()


# ---- names: what checkpoints were written with before the layout module ----

@pytest.mark.parametrize("family", ["llama", "qwen2", "tied"])
def test_state_dict_keys_are_the_old_names(family):
    config = family_config(family)
    keys = set(build_model(config, VOCAB, device="meta").state_dict())
    assert keys == old_names(config.layers_num, config.qkv_bias)
    assert layout.EMBEDDING == OLD_GLOBAL[0] and layout.NORM == OLD_GLOBAL[1]
    assert layout.OUTPUT == OLD_GLOBAL[2]


def test_checkpoint_with_old_names_loads_and_resumes_bit_for_bit(tmp_path):
    """A checkpoint written with the previous names (generated here from them, not from the
    model) loads through load_model and through the trainer's path, bit for bit."""
    config = load_config(TINY)
    shapes = {name: tuple(t.shape) for name, t in build_model(config, VOCAB, device="meta")
              .state_dict().items()}
    state = random_state({name: shapes[name] for name in sorted(old_names(config.layers_num))})
    path = str(tmp_path / "old.bin")
    save_state_dict_file(state, path)

    model = tencentpretrain.load_model(TINY, path)
    assert all(torch.equal(t, state[name]) for name, t in model.state_dict().items())
    with torch.no_grad():  # the forward the old Model spelled out: target.lm by name
        manual = model.target.lm(model.encoder(model.embedding(IDS)))
        assert torch.equal(model(IDS), manual)

    weights, vocab = ckpt.open_pretrained(path, config)  # what pretrain.py does
    trained = build_model(config, vocab)
    ckpt.load_weights(trained, weights, zero3=False, rank=0)
    saved = ckpt.consolidated_state_dict(trained, zero3=False, rank=0)
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[name], state[name]) for name in state)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "tied"])
def test_hf_name_maps_equal_the_old_converter(family):
    config = family_config(family)
    model = build_model(config, VOCAB)
    state = random_state({k: t.shape for k, t in model.state_dict().items()})
    hf = layout.to_hf(state, config)
    # the old converter: literal names, q/k rows permuted per head (halves, not pairs)
    expected = {hf_name: state[ours] for ours, hf_name in zip(OLD_GLOBAL, OLD_HF_GLOBAL)
                if not (family == "tied" and hf_name == "lm_head.weight")}
    biases = [f"self_attn.linear_layers.{j}.bias" for j in range(3)] if config.qkv_bias else []
    hf_biases = [f"self_attn.{p}_proj.bias" for p in "qkv"] if config.qkv_bias else []
    for i in range(config.layers_num):
        for ours, hf_name in zip(OLD_LAYER + biases, OLD_HF_LAYER + hf_biases):
            tensor = state[f"encoder.transformer.{i}.{ours}"]
            heads = {"linear_layers.0": config.heads_num,
                     "linear_layers.1": config.kv_heads_num}.get(ours.split(".", 1)[1][:15])
            if heads:
                rows = tensor.reshape(heads, tensor.shape[0] // heads // 2, 2, -1)
                tensor = rows.transpose(1, 2).reshape(tensor.shape)
            expected[f"model.layers.{i}.{hf_name}"] = tensor
    assert hf.keys() == expected.keys()
    assert all(torch.equal(hf[k], expected[k]) for k in expected), family
    back = layout.from_hf(hf, config)
    assert back.keys() == state.keys() - ({layout.OUTPUT} if config.tie_weights else set())
    assert all(torch.equal(back[k], state[k]) for k in back)


def test_meta_and_peft_name_maps_equal_the_old_converters():
    for i in (0, 11):
        for meta, ours, dim in zip(OLD_META_LAYER, OLD_LAYER, OLD_META_DIMS):
            assert layout.from_meta_name(f"layers.{i}.{meta}") == (
                f"encoder.transformer.{i}.{ours}", dim)
    for meta, expected in OLD_META_GLOBAL.items():
        assert layout.from_meta_name(meta) == expected

    config = family_config("llama", local_kv_heads_num=2)
    lora = LoraConfig(targets=("q", "k", "v", "o", "gate", "up", "down"),
                      modules_to_save=("embedding", "output"))
    pairs = list(layout.peft_pairs(lora.targets, lora.modules_to_save, config))
    expected = []
    for i in range(config.layers_num):
        for ours, hf_name in zip(OLD_LAYER[:7], OLD_HF_LAYER[:7]):
            ours, hf_name = ours.removesuffix(".weight"), hf_name.removesuffix(".weight")
            peft = f"base_model.model.model.layers.{i}.{hf_name}"
            heads = {"q_proj": 4, "k_proj": 2}.get(hf_name.rpartition(".")[2])
            expected += [(f"encoder.transformer.{i}.{ours}.lora_A", f"{peft}.lora_A.weight", None),
                         (f"encoder.transformer.{i}.{ours}.lora_B", f"{peft}.lora_B.weight", heads)]
    expected += [(OLD_GLOBAL[0], "base_model.model.model.embed_tokens.weight", None),
                 (OLD_GLOBAL[2], "base_model.model.lm_head.weight", None)]
    assert pairs == expected


def test_no_tensor_name_spelled_outside_the_layout_and_model_code():
    model_code = ("tencentpretrain/models/", "tencentpretrain/encoders/",
                  "tencentpretrain/embeddings/", "tencentpretrain/targets/",
                  "tencentpretrain/decoders/", "tencentpretrain/layers/")
    # the grep, and our global tensor names as strings
    spelled = re.compile(r"encoder\.transformer\.|[\"'](embedding\.word\.|target\.lm\.|encoder\.)")
    found = []
    for folder in ("tencentpretrain", "scripts", "inference"):
        for base, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                path = os.path.relpath(os.path.join(base, name), ROOT)
                if name.endswith(".py") and not path.startswith(model_code):
                    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
                        found += [path for line in f if spelled.search(line)]
    assert not found, sorted(set(found))


def test_model_builder_does_not_import_adapters():
    code = ("import sys, tencentpretrain.model_builder; "
            "print(sorted(m for m in sys.modules if m in ('tencentpretrain.adapters', "
            "'tencentpretrain.convert.peft_lora', 'tencentpretrain.loading')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


# ---- registries as extension points ----

class ToyDecoder(Encoder):
    """One linear layer per configured layer, residual; implements the encoder interface."""

    def __init__(self, config):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size)
                                    for _ in range(2))
        self.calls = 0

    def layers(self):
        return self.blocks

    def forward(self, memory, seg=None):
        self.calls += 1
        for block in self.blocks:
            memory = memory + block(memory)
        return memory


class MeanTarget(nn.Module):
    """Mean hidden state per position; with labels, a (sum, count) as the trainer expects."""

    def __init__(self, config, vocab_size):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, hidden, labels=None, loss_mask=None):
        score = self.scale * hidden.mean(-1)
        if labels is None:
            return score
        return score.sum(), torch.tensor(score.numel())


def config_with(**changes):
    raw = dict(load_config(TINY).__dict__)
    raw.pop("source")
    raw.update(changes)
    return config_from_dict(raw, source="<test>")


def test_decoder_null_or_absent_is_unchanged():
    torch.manual_seed(0)
    absent = build_model(config_with(), VOCAB)
    absent.init_weights()
    null = build_model(config_with(decoder=None), VOCAB)
    null.load_state_dict(absent.state_dict())
    assert absent.decoder is None and null.decoder is None
    assert list(null.state_dict()) == list(absent.state_dict())
    with torch.no_grad():
        assert torch.equal(null(IDS), absent(IDS))


def test_a_decoder_registered_at_run_time_is_built_and_run(monkeypatch):
    monkeypatch.setitem(str2decoder, "toy", ToyDecoder)
    torch.manual_seed(0)
    plain = build_model(config_with(), VOCAB)
    plain.init_weights()
    model = build_model(config_with(decoder="toy"), VOCAB)
    assert isinstance(model.decoder, ToyDecoder)
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        f"decoder.blocks.{i}.{p}" for i in range(2) for p in ("weight", "bias")}
    model.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        for block in model.decoder.blocks:
            block.weight.zero_()
            block.bias.zero_()
        assert torch.equal(model(IDS), plain(IDS))  # a zero decoder is the identity
        model.decoder.blocks[0].bias.fill_(0.5)
        assert not torch.equal(model(IDS), plain(IDS))
    assert model.decoder.calls == 2
    assert layout.layers(model)[-2:] == list(model.decoder.blocks)  # its parts: the layout's
    assert [path for path, _ in layout.named_layers(model)][-1] == "decoder.blocks.1"
    assert layout.blocks(model)[-2:] == [model.decoder.blocks[1], model.target]
    layout.enable_activation_checkpointing(model, 2)
    assert model.decoder.checkpoint_layers_num == 2 == model.encoder.checkpoint_layers_num


class ToyPositionEmbedding(nn.Module):
    """A learned absolute position table, summed with the word embedding."""

    def __init__(self, config, vocab_size):
        super().__init__()
        self.table = nn.Embedding(config.max_seq_length, config.emb_size)

    def forward(self, input_ids, position_ids=None, seg=None):
        if position_ids is None:
            position_ids = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        return self.table(position_ids)


def test_an_embedding_registered_at_run_time_is_summed_with_the_others(monkeypatch):
    monkeypatch.setitem(str2embedding, "toy_position", ToyPositionEmbedding)
    torch.manual_seed(0)
    plain = build_model(config_with(), VOCAB)
    plain.init_weights()
    model = build_model(config_with(embedding=["word", "toy_position"]), VOCAB)
    assert set(model.state_dict()) - set(plain.state_dict()) == {
        "embedding.toy_position.table.weight"}
    model.load_state_dict(plain.state_dict(), strict=False)
    assert layout.embedding_table(model) is model.embedding.word.embedding  # still the word one
    with torch.no_grad():
        model.embedding.toy_position.table.weight.zero_()
        assert torch.equal(model(IDS), plain(IDS))
        model.embedding.toy_position.table.weight[3].fill_(0.25)
        changed = (model(IDS) != plain(IDS)).any(-1)
    assert changed[:, :3].sum() == 0 and changed[:, 3:].all()  # causal: from position 3 on


class ToyEncoder(Encoder):
    """Residual linear layers and a final norm: the encoder interface and nothing else."""

    def __init__(self, config):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(config.hidden_size, config.hidden_size)
                                    for _ in range(config.layers_num))
        self.norm = nn.LayerNorm(config.hidden_size)

    def layers(self):
        return self.blocks

    def final_norm(self):
        return self.norm

    def forward(self, hidden, seg=None, position_ids=None, key_mask=None, kv_cache=None,
                isolate_segments=False):
        step = lambda block, x, mask: x + torch.tanh(block(x))  # noqa: E731
        if self.checkpointing():
            hidden = self.checkpointed(hidden, None, step)
        else:
            for block in self.blocks:
                hidden = step(block, hidden, None)
        return self.norm(hidden)


def test_an_encoder_registered_at_run_time_is_built_trained_and_checkpointed(monkeypatch):
    monkeypatch.setitem(str2encoder, "toy", ToyEncoder)
    torch.manual_seed(0)
    model = build_model(config_with(encoder="toy"), VOCAB)
    assert isinstance(model.encoder, ToyEncoder)
    assert layout.layers(model) == list(model.encoder.blocks)
    assert layout.final_norm(model) is model.encoder.norm
    assert {path for path, _ in layout.named_layers(model)} == {"encoder.blocks.0",
                                                                 "encoder.blocks.1"}
    loss, count = model(IDS, labels=IDS)
    loss.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    layout.enable_activation_checkpointing(model, 1)
    assert model.encoder.checkpoint_layers_num == 1 and model.encoder.checkpointing()
    recomputed, _ = model(IDS, labels=IDS)
    recomputed.backward()
    assert torch.equal(recomputed, loss)
    for p, grad in zip(model.parameters(), plain_grads):
        torch.testing.assert_close(p.grad, grad)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(5):
        optimizer.zero_grad()
        step_loss, count = model(IDS, labels=IDS)
        (step_loss / count).backward()
        optimizer.step()
        losses.append(float(step_loss.detach() / count))
    assert losses[-1] < losses[0]


def test_a_target_registered_at_run_time_is_called_through_the_registry(monkeypatch):
    monkeypatch.setitem(str2target, "mean", MeanTarget)
    model = build_model(config_with(target=["mean"]), VOCAB)
    assert list(model.state_dict())[-1] == "target.mean.scale"
    with torch.no_grad():
        hidden = model.encoder(model.embedding(IDS))
        assert torch.equal(model(IDS), hidden.mean(-1))
        loss, count = model(IDS, labels=IDS)
        assert count == IDS.numel() and torch.equal(loss, hidden.mean(-1).sum())
    with pytest.raises(ConfigError, match=r'^"target" in <test> is \[\'lm\', \'mean\'\]; the '
                                          r'trainer trains exactly one target'):
        build_model(config_with(target=["lm", "mean"]), VOCAB)


def test_lora_finds_its_targets_through_the_layout():
    model = inject_lora(build_model(TINY, VOCAB), LoraConfig(targets=("q", "down")))
    adapters = [name for name, p in model.named_parameters() if p.requires_grad]
    assert adapters == [f"encoder.transformer.{i}.{m}.lora_{x}" for i in range(2)
                        for m in ("self_attn.linear_layers.0", "feed_forward.linear_2")
                        for x in "AB"]
