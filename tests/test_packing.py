"""Packed instruction tuning (preprocess.py --packing): the packing itself, the masks and
positions that isolate examples, and equality with training / evaluating them unpacked."""
import filecmp
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tencentpretrain
from tencentpretrain.data import DatasetError, Sample, TokenDataset, collate, preprocess
from tencentpretrain.data.packing import document_positions, first_fit_decreasing
from tencentpretrain.layers.masks import causal_document_mask
from tests.conftest import ROOT, tiny_checkpoint
from tests.training_support import loss_and_grads

TINY_GQA = os.path.join(ROOT, "models", "llama", "tiny_gqa_config.json")
SEQ_LENGTH = 512
EXAMPLES = 150


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, shared_data, llama_spm):
    """The first EXAMPLES of alpaca_zh_demo as JSON lines (so workers split it), packed with
    1 and 2 processes (small shards, so several), and unpacked."""
    tmp = tmp_path_factory.mktemp("packing")
    with open(os.path.join(shared_data, "alpaca_zh_demo.json"), encoding="utf-8") as f:
        records = json.load(f)[:EXAMPLES]
    corpus = tmp / "alpaca.jsonl"
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    out = {"summaries": {}}
    for name, options in (("packed1", {"packing": True, "processes_num": 1}),
                          ("packed2", {"packing": True, "processes_num": 2}),
                          ("unpacked", {})):
        out[name] = str(tmp / name)
        out["summaries"][name] = preprocess(str(corpus), llama_spm, out[name], data_processor="alpaca",
                                            seq_length=SEQ_LENGTH, shard_tokens=10000,
                                            progress=False, **options)
    return out


def examples_of(sample):
    """The examples of a packed sample as unpacked Samples."""
    return [Sample(sample.tokens[sample.segments == k], int(prompt),
                   np.ones(int((sample.segments == k).sum()), np.int32))
            for k, prompt in enumerate(sample.example_prompts, start=1)]


def test_first_fit_decreasing():
    assert [b.tolist() for b in first_fit_decreasing([5, 4, 3, 3, 2, 1], 8)] == [[0, 2], [1, 3, 5], [4]]
    assert first_fit_decreasing([], 8) == []
    with pytest.raises(ValueError, match="exceeds the capacity 8"):
        first_fit_decreasing([9], 8)


def test_packing_is_the_same_whatever_processes_num(datasets):
    assert datasets["summaries"]["packed2"]["processes"] == 2
    files = sorted(os.listdir(datasets["packed1"]))
    assert files == sorted(os.listdir(datasets["packed2"])) and "shard_00001.doc.npy" in files
    meta = [json.load(open(os.path.join(datasets[n], "meta.json"))) for n in ("packed1", "packed2")]
    assert meta[0] == meta[1] and meta[0]["format_version"] == 2 and meta[0]["packed"] is True
    match, mismatch, errors = filecmp.cmpfiles(datasets["packed1"], datasets["packed2"],
                                               [f for f in files if f != "meta.json"], shallow=False)
    assert not mismatch and not errors


def test_every_example_exactly_once(datasets):
    packed, unpacked = TokenDataset(datasets["packed1"]), TokenDataset(datasets["unpacked"])
    assert packed.packed and not unpacked.packed and unpacked.meta["format_version"] == 1
    found = []
    for i in range(len(packed)):
        sample = packed[i]
        assert len(sample.tokens) <= SEQ_LENGTH + 1
        assert sample.segments[0] == 1 and len(sample.example_prompts) == sample.segments.max()
        found += [(tuple(e.tokens), e.prompt_length) for e in examples_of(sample)]
    expected = [(tuple(s.tokens), s.prompt_length) for s in (unpacked[i] for i in range(len(unpacked)))]
    assert len(found) == len(expected) == EXAMPLES and sorted(found) == sorted(expected)
    summary = datasets["summaries"]["packed1"]
    assert len(packed) < 0.6 * len(unpacked) and summary["fill"] > 0.9
    assert summary["fill"] == pytest.approx(packed.num_tokens / (len(packed) * (SEQ_LENGTH + 1)))


def test_version_1_reader_rules(datasets, tmp_path):
    """A packed dataset claiming version 1 (which readers of old would train unisolated) is refused."""
    import shutil
    copy = tmp_path / "ds"
    shutil.copytree(datasets["packed1"], copy)
    meta = json.load(open(copy / "meta.json"))
    meta["format_version"] = 1
    json.dump(meta, open(copy / "meta.json", "w"))
    with pytest.raises(DatasetError, match="packed True do not go together"):
        TokenDataset(str(copy))


def test_cli_packing(shared_data, llama_spm, tmp_path):
    def cli(*args):
        return subprocess.run([sys.executable, os.path.join(ROOT, "preprocess.py"), "--spm_model_path",
                               llama_spm, "--no_progress", *args], capture_output=True, text=True, cwd=ROOT)
    result = cli("--corpus_path", os.path.join(shared_data, "alpaca_zh_demo.json"), "--dataset_path",
                 str(tmp_path / "p"), "--data_processor", "llm_sft", "--packing", "--seq_length", "1024")
    assert result.returncode == 0, result.stderr
    assert "samples    311\n" in result.stdout and "fill       99.2%" in result.stdout
    result = cli("--corpus_path", os.path.join(shared_data, "c4_demo.jsonl"), "--dataset_path",
                 str(tmp_path / "l"), "--packing")
    assert result.returncode == 2
    assert result.stderr == "error: --packing applies to --data_processor alpaca / conversation only\n"


def test_document_mask_and_positions():
    seg = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0]])
    mask, is_causal = causal_document_mask(1, 8, seg=seg)
    mask = mask[0, 0]
    assert not is_causal
    query, key = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    assert torch.equal(mask, (key <= query) & (seg[0][:, None] == seg[0][None, :]))
    assert mask[3].nonzero().flatten().tolist() == [3]  # an example's first token sees itself only
    assert mask[5].nonzero().flatten().tolist() == [5]
    assert mask.any(dim=1).all()  # padding rows too: never an all-False row
    assert document_positions(seg).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]


@pytest.fixture(scope="module")
def gqa_model():
    torch.manual_seed(0)
    model = tencentpretrain.build_model(TINY_GQA, 32000).float()
    assert model.config.kv_heads_num < model.config.heads_num
    return model


@pytest.mark.parametrize("prefix_lm_loss", [True, False])
def test_packed_batch_equals_examples_one_by_one(datasets, gqa_model, prefix_lm_loss):
    """Summed loss and gradients of a padded packed batch == its examples run alone (fp32, GQA)."""
    ds = TokenDataset(datasets["packed1"])
    every = [ds[i] for i in range(len(ds))]
    samples = [max(every, key=lambda s: s.segments.max()), min(every, key=lambda s: len(s.tokens))]
    assert samples[0].segments.max() >= 3 and len(samples[1].tokens) < len(samples[0].tokens)
    batch = collate(samples, ds.pad_id, prefix_lm_loss)
    assert batch["isolate_segments"] and torch.equal(batch["position_ids"], document_positions(batch["seg"]))
    packed = loss_and_grads(gqa_model, [batch])
    alone = loss_and_grads(gqa_model, [collate([e], ds.pad_id, prefix_lm_loss)
                                       for s in samples for e in examples_of(s)])
    expected_count = sum(len(e.tokens) - (e.prompt_length if prefix_lm_loss else 1)
                         for s in samples for e in examples_of(s))
    assert packed[1] == alone[1] == expected_count
    assert float(packed[0]) == pytest.approx(float(alone[0]), rel=1e-5)
    for name, grad in packed[2].items():
        scale = alone[2][name].abs().max()
        assert (grad - alone[2][name]).abs().max() <= 1e-5 * scale, name


def test_padding_rows_never_nan(datasets, gqa_model):
    ds = TokenDataset(datasets["packed1"])
    batch = collate([ds[0], Sample(np.array([5]), 0, np.ones(1, np.int32), np.array([1]))],
                    ds.pad_id, True, pad_to=SEQ_LENGTH)
    with torch.no_grad():
        logits = gqa_model(**{k: v for k, v in batch.items() if k not in ("labels", "loss_mask")})
    assert torch.isfinite(logits).all()


def test_lm_causal_document_restarts_positions(tmp_path, gqa_model):
    """With "mask": "causal_document", a packed lm document gives the logits it gives alone."""
    config = json.load(open(TINY_GQA))
    config["mask"] = "causal_document"
    path = tmp_path / "doc.json"
    path.write_text(json.dumps(config))
    model = tencentpretrain.build_model(str(path), 32000).float()
    model.load_state_dict(gqa_model.state_dict())
    first, second = torch.tensor([[1, 306, 763, 2]]), torch.tensor([[1, 450, 4996, 17354, 2]])
    packed = torch.cat([first, second], dim=1)
    seg = torch.tensor([[1] * 4 + [2] * 5])
    with torch.no_grad():
        together = model(packed, seg=seg)
        torch.testing.assert_close(together[:, 4:], model(second), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(together[:, :4], model(first), rtol=1e-5, atol=1e-5)
        # the config's plain causal mask with seg does not isolate unless the batch is packed
        assert not torch.allclose(gqa_model(packed, seg=seg)[:, 4:], model(second), atol=1e-3)


def test_evaluate_ppl_packed_equals_unpacked(shared_data, llama_spm, tmp_path, capsys):
    """inference/evaluate_ppl.py --prefix_lm_loss: same token count and loss packed or not."""
    from inference.evaluate_ppl import main
    with open(os.path.join(shared_data, "alpaca_zh_demo.json"), encoding="utf-8") as f:
        (tmp_path / "a.json").write_text(json.dumps(json.load(f)[:24], ensure_ascii=False), encoding="utf-8")
    config = tiny_checkpoint(tmp_path / "tiny.bin", config_path=TINY_GQA)
    printed = []
    for packing in (True, False):
        preprocess(str(tmp_path / "a.json"), llama_spm, str(tmp_path / "ds"), data_processor="alpaca",
                   seq_length=SEQ_LENGTH, packing=packing, progress=False)
        main(["--load_model_path", str(tmp_path / "tiny.bin"), "--config_path", config,
              "--spm_model_path", llama_spm, "--dataset_path", str(tmp_path / "ds"), "--prefix_lm_loss",
              "--device", "cpu", "--dtype", "float32"])
        printed.append(capsys.readouterr().out.split())  # tokens: N  loss: L  perplexity: P
    assert printed[0][1] == printed[1][1] and int(printed[0][1]) > 1000
    assert float(printed[0][3]) == pytest.approx(float(printed[1][3]), rel=1e-5)


def windowed(model, window):
    """The same weights as ``model`` with a sliding window (None: none)."""
    from tencentpretrain.config import config_from_dict
    config = config_from_dict({**{k: getattr(model.config, k) for k in (
        "emb_size", "hidden_size", "feedforward_size", "heads_num", "layers_num",
        "max_seq_length", "local_kv_heads_num", "rope_theta", "layernorm_eps")},
        "sliding_window": window})
    copy = tencentpretrain.build_model(config, 32000)
    copy.load_state_dict(model.state_dict())
    return copy


ISOLATION_SEG = torch.tensor([[1] * 30 + [2] * 50 + [3] * 20, [1] * 60 + [0] * 40, [1] * 100])


@pytest.mark.parametrize("window", [None, 24])
def test_isolation_kinds_equal_the_dense_mask(gqa_model, window):
    """The spans path (CPU default: causal SDPA per example) gives the dense boolean mask's
    logits and gradients; the GPU path (FlexAttention block mask, compiled) its logits (on CPU
    FlexAttention has no backward). GQA, a padding tail, a row that is one example."""
    model = windowed(gqa_model, window)
    ids = torch.randint(0, 32000, ISOLATION_SEG.shape, generator=torch.Generator().manual_seed(0))
    logits, grads = {}, {}
    for kind in ("dense", "spans", "block_mask"):
        model.encoder.isolation = kind
        model.zero_grad()
        with torch.set_grad_enabled(kind != "block_mask"):
            logits[kind] = model(ids, seg=ISOLATION_SEG, isolate_segments=True)
        if kind != "block_mask":
            (logits[kind] * torch.linspace(-1, 1, 32000)).sum().backward()
            grads[kind] = [p.grad.clone() for p in model.parameters()]
    for kind in ("spans", "block_mask"):
        assert (logits[kind] - logits["dense"]).abs().max().item() <= 1e-5, kind
    for spans, dense in zip(grads["spans"], grads["dense"]):
        assert (spans - dense).abs().max() <= 1e-5 * dense.abs().max()
    model.encoder.isolation = None  # by device: spans on CPU
    with torch.no_grad():
        alone = model(ids[:1, 30:80])  # the second example of row 0, run by itself
        assert (model(ids, seg=ISOLATION_SEG, isolate_segments=True)[:1, 30:80] - alone).abs().max() <= 1e-5


def test_document_spans():
    from tencentpretrain.layers.masks import DocumentSpans
    spans = DocumentSpans(ISOLATION_SEG, window=24)
    assert spans.rows == [[(0, 30), (30, 50), (80, 20)], [(0, 60), (60, 40)], [(0, 100)]]
    assert spans.window_mask(24, "cpu") is None
    assert torch.equal(spans.window_mask(30, "cpu")[0, 0], causal_document_mask(
        1, 30, seg=torch.ones(1, 30), window=24)[0][0, 0])


def test_block_mask_falls_back_to_spans_under_attention_dropout(gqa_model):
    """FlexAttention has no dropout: a model training with attention dropout isolates packed
    examples with spans instead, and the dropout really applies (two passes differ)."""
    model = windowed(gqa_model, None)
    model.config.dropout = 0.5
    for layer in model.encoder.transformer:
        layer.self_attn.dropout = 0.5
    assert model.encoder.isolation is None and model.encoder.isolation_kind() == "spans"
    model.encoder.isolation = "block_mask"
    model.eval()
    assert model.encoder.isolation_kind() == "block_mask"  # evaluating: no dropout
    model.train()
    assert model.encoder.isolation_kind() == "spans"
    ids = torch.randint(0, 32000, ISOLATION_SEG.shape, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    first = model(ids, seg=ISOLATION_SEG, isolate_segments=True)
    second = model(ids, seg=ISOLATION_SEG, isolate_segments=True)
    assert torch.isfinite(first).all() and not torch.equal(first, second)
