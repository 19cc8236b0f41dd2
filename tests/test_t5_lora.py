"""LoRA on T5: q, k, v, o and the feed-forward of encoder and decoder layers, and the decoder's
cross-attention (cross_q, cross_k, cross_v, cross_o); merged == unmerged (through
scripts/merge_lora.py); a LoRA seq2seq run trains only the adapters and lowers the loss; PEFT
export refuses T5 in one line."""
import os

import pytest
import torch

import tencentpretrain
from tencentpretrain.config import ConfigError
from tencentpretrain.layers.lora import LoraConfig, LoraLinear, inject_lora
from tencentpretrain.utils.weights import load_state_dict_file, save_state_dict_file
from tests.conftest import ROOT
from tests.test_seq2seq_data import PAIRS, write_jsonl
from tests.training_support import LLAMA_SPM, logged_losses, run_in_process

T5_TINY = os.path.join(ROOT, "models", "t5-v1_1", "tiny_config.json")
LLAMA_TINY = os.path.join(ROOT, "models", "llama", "tiny_config.json")
ALL = ("q", "k", "v", "o", "gate", "up", "down", "cross_q", "cross_k", "cross_v", "cross_o")
VOCAB = 300
SRC = torch.tensor([[5, 17, 40, 3, 9, 42, 7, 88, 2], [5, 6, 7, 8, 2, 0, 0, 0, 0]])
TGT = torch.tensor([[0, 11, 12, 13, 14], [0, 50, 51, 52, 53]])


def forward(model):
    return model(SRC, key_mask=SRC != 0, tgt_ids=TGT)


def lora_model(seed=0):
    torch.manual_seed(seed)
    model = tencentpretrain.build_model(T5_TINY, VOCAB).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, LoraConfig(r=4, alpha=8, targets=ALL))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    return model, base


def test_targets_cover_encoder_decoder_and_cross_attention():
    model, _ = lora_model()
    decoder = model.decoder.transformer_decoder[0]
    encoder = model.encoder.transformer[0]
    for module in (decoder.self_attn.linear_layers[0], decoder.context_attn.linear_layers[2],
                   decoder.context_attn.final_linear, decoder.feed_forward.linear_gate,
                   encoder.self_attn.final_linear, encoder.feed_forward.linear_2):
        assert isinstance(module, LoraLinear)
    assert not hasattr(encoder, "context_attn")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    config = model.config
    # 7 per encoder layer, 11 per decoder layer, A and B each
    assert len(trainable) == 2 * (7 * config.layers_num + 11 * config.decoder_layers)
    with pytest.raises(ConfigError, match="names no decoder"):
        inject_lora(tencentpretrain.build_model(LLAMA_TINY, VOCAB, device="meta"),
                    LoraConfig(targets=("q", "cross_q")))


def test_merged_equals_unmerged_through_merge_lora(tmp_path):
    from scripts.merge_lora import main as merge_main
    from tencentpretrain.adapters import save_adapter
    from tencentpretrain.layers.lora import adapter_names
    model, base = lora_model()
    with torch.no_grad():
        unmerged = forward(model)
        plain = tencentpretrain.build_model(T5_TINY, VOCAB).eval()
        plain.load_state_dict(base)
        assert not torch.allclose(forward(plain), unmerged, atol=1e-3)
    base_path, adapter_path = str(tmp_path / "base.bin"), str(tmp_path / "adapter")
    save_state_dict_file(base, base_path)
    state = model.state_dict()
    save_adapter(adapter_path, model.lora_config, {n: state[n] for n in adapter_names(model)})
    merged_path = str(tmp_path / "merged.bin")
    merge_main(["--base_model_path", base_path, "--lora_model_path", adapter_path,
                "--config_path", T5_TINY, "--output_model_path", merged_path,
                "--allow_other_base"])
    with torch.no_grad():
        loaded = tencentpretrain.load_model(T5_TINY, merged_path).eval()
        torch.testing.assert_close(forward(loaded), unmerged, rtol=0, atol=1e-5)


def test_lora_seq2seq_run_trains_only_adapters_and_lowers_the_loss(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "tiny.jsonl", PAIRS)
    from tencentpretrain.data import preprocess
    data = str(tmp_path / "ds")
    preprocess(corpus, LLAMA_SPM, data, data_processor="seq2seq", seq_length=32,
               progress=False, processor_options={})
    torch.manual_seed(0)
    base = str(tmp_path / "base.bin")
    from tencentpretrain.tokenizer import load_tokenizer
    vocab = load_tokenizer(LLAMA_SPM).vocab_size
    save_state_dict_file(tencentpretrain.build_model(T5_TINY, vocab).state_dict(), base)
    out = str(tmp_path / "lora")
    run_in_process(["--dataset_path", data, "--spm_model_path", LLAMA_SPM, "--config_path",
                    T5_TINY, "--pretrained_model_path", base, "--output_model_path", out,
                    "--total_steps", "20", "--report_steps", "1", "--batch_size", "4",
                    "--learning_rate", "1e-2", "--warmup", "0", "--data_processor", "seq2seq",
                    "--use_lora", "--lora_r", "4", "--lora_target_modules", ",".join(ALL)])
    losses = logged_losses(capsys.readouterr().out)
    assert losses[20] < losses[1] - 0.5, losses
    adapter = load_state_dict_file(out + ".safetensors")
    assert all(".lora_" in name for name in adapter)
    assert any("context_attn" in name for name in adapter)
    assert any(name.startswith("decoder.") for name in adapter)
    assert any(name.startswith("encoder.") for name in adapter)


def test_peft_export_refuses_t5():
    from tencentpretrain.config import load_config
    from tencentpretrain.convert.peft_lora import to_peft
    with pytest.raises(ConfigError, match="LLaMA-family models only"):
        to_peft(LoraConfig(targets=("q",)), {}, load_config(T5_TINY))
