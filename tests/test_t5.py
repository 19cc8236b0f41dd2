"""T5 / T5 v1.1 through the decoder registry, against transformers' T5ForConditionalGeneration:
parameter counts of the shipped configs, logits of tiny random models (tied original T5 and
untied v1.1, encoder and decoder depths that differ, non-default buckets), conversion both
ways, greedy generation with the KV cache."""
import os

import pytest
import torch

import tencentpretrain
from tencentpretrain.config import load_config
from tencentpretrain.convert.hf_t5 import config_from_hf, config_to_hf
from tencentpretrain.generation import SamplingOptions
from tencentpretrain.models import layout
from tencentpretrain.utils.weights import WeightsError
from tests.conftest import ROOT

transformers = pytest.importorskip("transformers")

VOCAB = 128
# transformers' T5Config numbers of the published checkpoints (config.json on the hub)
PUBLISHED = {
    "t5/small": (dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6,
                      feed_forward_proj="relu", tie_word_embeddings=True), 60_506_624),
    "t5/base": (dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12,
                     feed_forward_proj="relu", tie_word_embeddings=True), 222_903_552),
    "t5-v1_1/small": (dict(d_model=512, d_ff=1024, d_kv=64, num_heads=6, num_layers=8,
                           feed_forward_proj="gated-gelu", tie_word_embeddings=False), 76_961_152),
    "t5-v1_1/base": (dict(d_model=768, d_ff=2048, d_kv=64, num_heads=12, num_layers=12,
                          feed_forward_proj="gated-gelu", tie_word_embeddings=False), 247_577_856),
}
TINY = {  # encoder and decoder depths differ, buckets and distance not the defaults
    "original": dict(d_model=64, d_ff=96, d_kv=16, num_heads=4, num_layers=3,
                     num_decoder_layers=2, relative_attention_num_buckets=16,
                     relative_attention_max_distance=20, feed_forward_proj="relu",
                     tie_word_embeddings=True, vocab_size=VOCAB, dropout_rate=0.0),
    "v1_1": dict(d_model=64, d_ff=96, d_kv=8, num_heads=6, num_layers=2,
                 num_decoder_layers=3, relative_attention_num_buckets=8,
                 relative_attention_max_distance=12, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, vocab_size=VOCAB, dropout_rate=0.0),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_shipped_configs_have_the_published_parameter_counts(name):
    hf_keys, published = PUBLISHED[name]
    ours = tencentpretrain.build_model(os.path.join(ROOT, f"models/{name}_config.json"), 32128,
                                       device="meta")
    assert sum(p.numel() for p in ours.parameters()) == published
    with torch.device("meta"):
        hf = transformers.T5ForConditionalGeneration(transformers.T5Config(vocab_size=32128,
                                                                           **hf_keys))
    # transformers >= 5 ties T5's lm_head in memory even for v1.1 (its checkpoints have one)
    untied_head = 0 if hf_keys["tie_word_embeddings"] else 32128 * hf_keys["d_model"]
    assert hf.num_parameters() + untied_head == published


def hf_t5(name, seed=0):
    """A tiny random HF T5; weights scaled so that greedy decoding is not degenerate."""
    torch.manual_seed(seed)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**TINY[name])).eval()
    with torch.no_grad():
        if not TINY[name]["tie_word_embeddings"]:  # untie (transformers >= 5 ties in memory)
            hf.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, hf.config.d_model))
            hf.config.scale_decoder_outputs = False
        for param_name, p in hf.named_parameters():
            if "layer_norm" in param_name:
                p.uniform_(0.5, 1.5)  # a swapped norm must show
            elif "relative_attention_bias" in param_name:
                p.normal_(0.0, 1.0)
            else:
                p.normal_(0.0, p.shape[1] ** -0.5)
    return hf


def hf_config_dict(name):
    return {**TINY[name], "model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}


def hf_state(hf):
    return {k: v for k, v in hf.state_dict().items()}


def ours_from(hf, name):
    config = config_from_hf(hf_config_dict(name))
    ours = tencentpretrain.build_model(config, VOCAB).eval()
    state = layout.from_hf(hf_state(hf), config)
    ours.load_state_dict(state, strict=not config.tie_weights)
    if config.tie_weights:
        layout.tie_weights(ours)
    return config, ours


SRC = torch.tensor([[5, 17, 40, 3, 9, 42, 7, 88, 30, 1], [5, 6, 7, 8, 9, 1, 0, 0, 0, 0]])
SRC_MASK = SRC != 0
SRC_MASK[0] = True
TGT = torch.tensor([[0, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26],
                    [0, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65]])


@pytest.fixture(scope="module", params=list(TINY))
def pair(request):
    hf = hf_t5(request.param)
    config, ours = ours_from(hf, request.param)
    return request.param, hf, config, ours


def test_logits_equal_transformers(pair):
    name, hf, config, ours = pair
    with torch.no_grad():
        expected = hf(input_ids=SRC, attention_mask=SRC_MASK.long(), decoder_input_ids=TGT).logits
        got = ours(SRC, key_mask=SRC_MASK, tgt_ids=TGT)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if config.tie_weights:  # without T5's d_model ** -0.5 rescale the tied logits differ
        ours.config.tie_weights = False
        with torch.no_grad():
            unscaled = ours(SRC, key_mask=SRC_MASK, tgt_ids=TGT)
        ours.config.tie_weights = True
        torch.testing.assert_close(unscaled, expected * config.hidden_size ** 0.5, rtol=1e-4,
                                   atol=1e-4)
        assert (unscaled - expected).abs().max() > 1e-2


def test_loss_with_labels_is_the_token_sum(pair):
    name, hf, config, ours = pair
    labels = torch.roll(TGT, -1, 1)
    mask = torch.ones_like(labels, dtype=torch.bool)
    mask[1, 10:] = False
    with torch.no_grad():
        loss_sum, count = ours(SRC, labels=labels, loss_mask=mask, key_mask=SRC_MASK, tgt_ids=TGT)
        hf_labels = labels.masked_fill(~mask, -100)
        expected = hf(input_ids=SRC, attention_mask=SRC_MASK.long(), decoder_input_ids=TGT,
                      labels=hf_labels).loss
    assert int(count) == int(mask.sum())
    torch.testing.assert_close(loss_sum / count, expected, rtol=1e-5, atol=1e-5)


def test_round_trip_hf_ours_hf_is_identical(pair):
    name, hf, config, ours = pair
    original = hf_state(hf)
    back = layout.to_hf(ours.state_dict(), config)
    expected = {k: v for k, v in original.items()
                if k not in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
                and not (config.tie_weights and k == "lm_head.weight")}
    assert back.keys() == expected.keys()
    assert all(torch.equal(back[k], expected[k]) for k in expected)
    hf_again = config_to_hf(config, VOCAB)
    for key in ("d_model", "d_kv", "d_ff", "num_heads", "num_layers", "num_decoder_layers",
                "relative_attention_num_buckets", "relative_attention_max_distance",
                "feed_forward_proj", "tie_word_embeddings"):
        assert hf_again[key] == TINY[name][key], key


def test_converter_refuses_what_it_cannot_reproduce(pair):
    name, hf, config, ours = pair
    state = hf_state(hf)
    with pytest.raises(WeightsError, match="has no place"):
        layout.from_hf({**state, "encoder.block.0.layer.0.SelfAttention.extra.weight":
                        torch.zeros(1)}, config)
    from tencentpretrain.config import ConfigError
    with pytest.raises(ConfigError, match="feed_forward_proj"):
        config_from_hf({**hf_config_dict(name), "feed_forward_proj": "gated-swish"})
    with pytest.raises(ConfigError, match="is_gated_act"):
        config_from_hf({**hf_config_dict(name), "is_gated_act": name == "original"})


def test_decoder_only_configs_unchanged():
    config = load_config(os.path.join(ROOT, "models/llama/tiny_config.json"))
    model = tencentpretrain.build_model(config, VOCAB, device="meta")
    assert model.decoder is None
    assert not any("relative" in k or "decoder" in k for k in model.state_dict())


PROMPTS = [[5, 17, 40, 3, 9, 42, 7, 88, 30, 1], [5, 6, 7, 1], [70, 71, 72, 73, 74, 75, 1]]


def test_greedy_generation_equals_transformers_generate(pair):
    """A batch of sources of different lengths, KV cache on, equal to HF generate (and to
    our own uncached decoding)."""
    from tencentpretrain.generation_seq2seq import generate_seq2seq, right_pad
    name, hf, config, ours = pair
    src, mask = right_pad(PROMPTS, 0, "cpu")
    with torch.no_grad():
        expected = hf.generate(input_ids=src, attention_mask=mask.long(), max_new_tokens=12,
                               do_sample=False, num_beams=1, eos_token_id=1, pad_token_id=0,
                               decoder_start_token_id=0,
                               # transformers 5 sizes its cache by the encoder's depth
                               use_cache=config.layers_num == config.decoder_layers)
    expected = [row[1:].tolist() for row in expected]  # after eos: pad
    expected = [row[:row.index(1)] if 1 in row else row for row in expected]
    greedy = SamplingOptions(top_k=1)
    got = generate_seq2seq(ours, PROMPTS, 12, eos_id=1, pad_id=0, options=greedy)
    assert got == expected
    assert len({tuple(row) for row in got}) == len(PROMPTS)  # not a degenerate model
    assert generate_seq2seq(ours, PROMPTS, 12, eos_id=1, pad_id=0, options=greedy,
                            use_cache=False) == got
    # one at a time: the same
    assert [generate_seq2seq(ours, [p], 12, eos_id=1, pad_id=0, options=greedy)[0]
            for p in PROMPTS] == got


def test_training_from_scratch_uses_t5_initialisation():
    """Each tensor's spread equals transformers' T5 init (T5PreTrainedModel._init_weights), and
    block-by-block initialisation (ZeRO-3's rank 0) equals the whole model's bit for bit."""
    hf_keys = dict(TINY["v1_1"], d_model=128, d_ff=256, d_kv=32, num_heads=4, vocab_size=2000)
    config = config_from_hf(dict(hf_keys, model_type="t5"))
    torch.manual_seed(0)
    ours = tencentpretrain.build_model(config, 2000)
    ours.init_weights()
    torch.manual_seed(0)
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**hf_keys))
    hf_state = hf.state_dict()
    for name, tensor in layout.to_hf(ours.state_dict(), config).items():
        if name == "lm_head.weight":  # transformers >= 5 ties it to shared in memory
            assert abs(tensor.std().item() - 1.0) < 0.05
            continue
        expected = hf_state[name].float().std().item()
        if "layer_norm" in name:
            assert torch.equal(tensor, torch.ones_like(tensor)), name
        else:
            assert abs(tensor.std().item() / expected - 1) < 0.2, (name, tensor.std(), expected)
    torch.manual_seed(1)
    whole = tencentpretrain.build_model(config, 2000)
    whole.init_weights()
    torch.manual_seed(1)
    blocks = tencentpretrain.build_model(config, 2000)
    for block in layout.blocks(blocks):
        type(blocks).init_weights(block, 0.02, blocks.config)
    b = blocks.state_dict()
    assert all(torch.equal(v, b[k]) for k, v in whole.state_dict().items())


def test_a_separate_target_embedding_is_refused():
    from tencentpretrain.config import ConfigError, config_from_dict
    import json
    raw = json.load(open(os.path.join(ROOT, "models/t5-v1_1/tiny_config.json")))
    with pytest.raises(ConfigError, match="share_embedding"):
        config_from_dict({**raw, "share_embedding": False}, source="cfg")
