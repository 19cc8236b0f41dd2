"""LoRA in one process: injection, merge, PEFT interop both ways, saving and exact resume,
the 7B trainable count, and bad input."""
import json
import os
import shutil

import pytest
import torch

import tencentpretrain
from tencentpretrain.adapters import save_adapter
from tencentpretrain.config import ConfigError, load_config
from tencentpretrain.convert.hf_llama import config_to_hf, hf_to_tencentpretrain
from tencentpretrain.layers.lora import LoraConfig, LoraLinear, adapter_names, inject_lora
from tencentpretrain.training import TrainingError
from tencentpretrain.utils.weights import (WeightsError, load_state_dict_file,
                                           save_state_dict_file)
from tests.conftest import ROOT
from tests.training_support import VOCAB_SIZE, logged_losses, pretrain_argv, run_in_process

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

TINY = os.path.join(ROOT, "models", "llama", "tiny_config.json")
TINY_GQA = os.path.join(ROOT, "models", "llama", "tiny_gqa_config.json")
VOCAB = 320
IDS = torch.tensor([[1, 17, 250, 3, 99, 42, 7, 300], [1, 5, 6, 7, 8, 9, 10, 11]])


def base_model(config_path, seed=0):
    torch.manual_seed(seed)
    model = tencentpretrain.build_model(config_path, VOCAB)
    model.init_weights()
    with torch.no_grad():  # non-trivial norms so a swapped norm would show
        for name, p in model.named_parameters():
            if "layer_norm" in name:
                p.uniform_(0.5, 1.5)
    return model.eval()


def trained_adapter(model, lora, seed=1):
    """Inject ``lora`` and give every trainable tensor non-zero random values, as training would."""
    inject_lora(model, lora)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    return model.eval()


def adapter_state(model):
    state = dict(model.named_parameters())
    return {name: state[name].detach().clone() for name in adapter_names(model)}


def write_base_and_adapter(tmp_path, config_path, lora):
    """(base weights file, adapter file, the LoRA model they make)."""
    model = base_model(config_path)
    base = str(tmp_path / "base.bin")
    save_state_dict_file(model.state_dict(), base)
    model = trained_adapter(model, lora)
    adapter = save_adapter(str(tmp_path / "adapter"), lora, adapter_state(model))
    return base, adapter, model


@pytest.mark.parametrize("config_path", [TINY, TINY_GQA])
def test_new_adapters_leave_logits_exactly_equal(config_path):
    model = base_model(config_path)
    base_names = set(model.state_dict())
    with torch.no_grad():
        expected = model(IDS)
        inject_lora(model, LoraConfig(r=4, alpha=8))
        assert torch.equal(model(IDS), expected)  # B = 0: bitwise the base model
    names = set(model.state_dict())
    assert base_names <= names  # base tensors keep their names
    config = load_config(config_path)
    assert len(names - base_names) == 2 * 7 * config.layers_num
    k_proj = model.encoder.transformer[0].self_attn.linear_layers[1]
    assert isinstance(k_proj, LoraLinear)
    assert k_proj.lora_B.shape == (config.kv_heads_num * config.head_dim, 4)  # GQA: kv size
    assert all(p.requires_grad == (".lora_" in n) for n, p in model.named_parameters())


def test_7b_trainable_parameters_on_meta_device():
    model = tencentpretrain.build_model(os.path.join(ROOT, "models", "llama", "7b_config.json"),
                                        32000, device="meta")
    total = sum(p.numel() for p in model.parameters())
    inject_lora(model, LoraConfig(r=8))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 19_988_480
    assert sum(p.numel() for p in model.parameters()) == total + 19_988_480


def test_modules_to_save_and_targets():
    model = inject_lora(base_model(TINY), LoraConfig(r=2, targets=("q", "v"),
                                                     modules_to_save=("embedding", "output")))
    names = adapter_names(model)
    assert names[0] == "embedding.word.embedding.weight"
    assert names[-1] == "target.lm.output_layer.weight"
    assert len(names) == 2 + 2 * 2 * 2  # q and v, A and B, 2 layers
    assert not isinstance(model.encoder.transformer[0].self_attn.final_linear, LoraLinear)


def test_merged_model_equals_unmerged(tmp_path):
    from scripts.merge_lora import main as merge_main
    lora = LoraConfig(r=4, alpha=16, dropout=0.1, modules_to_save=("output",))
    base, adapter, model = write_base_and_adapter(tmp_path, TINY_GQA, lora)
    with torch.no_grad():
        unmerged = model(IDS)
        loaded = tencentpretrain.load_model(TINY_GQA, base, lora_model_path=adapter)
        assert torch.equal(loaded(IDS), unmerged)  # dropout is off at inference
        assert not torch.allclose(unmerged, base_model(TINY_GQA)(IDS), atol=1e-3)
        merged_file = str(tmp_path / "merged.bin")
        merge_main(["--base_model_path", base, "--lora_model_path", adapter, "--config_path",
                    TINY_GQA, "--output_model_path", merged_file])
        merged = tencentpretrain.load_model(TINY_GQA, merged_file)
        torch.testing.assert_close(merged(IDS), unmerged, rtol=0, atol=1e-5)
    assert set(load_state_dict_file(merged_file)) == set(load_state_dict_file(base))


def hf_base(config_path, tmp_path):
    """Our base weights file and the same model in transformers."""
    config = load_config(config_path)
    hf_config = transformers.LlamaConfig(**config_to_hf(config, VOCAB))
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(hf_config).eval()
    base = str(tmp_path / "base.bin")
    save_state_dict_file(hf_to_tencentpretrain(hf.state_dict(), config), base)
    return base, hf


def hf_logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_our_adapter_loads_in_peft_and_back(tmp_path):
    from scripts.convert_lora_to_peft import main as convert_main
    base, hf = hf_base(TINY_GQA, tmp_path)
    lora = LoraConfig(r=4, alpha=8, modules_to_save=("embedding", "output"))
    model = trained_adapter(tencentpretrain.load_model(TINY_GQA, base), lora)
    adapter = save_adapter(str(tmp_path / "adapter"), lora, adapter_state(model))
    peft_dir = str(tmp_path / "peft")
    convert_main(["--input_model_path", adapter, "--config_path", TINY_GQA,
                  "--output_model_path", peft_dir])
    with torch.no_grad():
        ours = model(IDS)
        theirs = hf_logits(peft.PeftModel.from_pretrained(hf, peft_dir).eval())
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-4)
        back = tencentpretrain.load_model(TINY_GQA, base, lora_model_path=peft_dir)
        assert torch.equal(back(IDS), ours)  # ours -> PEFT -> ours is lossless


def test_peft_adapter_loads_into_ours(tmp_path):
    base, hf = hf_base(TINY_GQA, tmp_path)
    peft_model = peft.get_peft_model(hf, peft.LoraConfig(
        r=4, lora_alpha=12, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                            "up_proj", "down_proj"],
        modules_to_save=["embed_tokens", "lm_head"]))
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    ours = tencentpretrain.load_model(TINY_GQA, base, lora_model_path=str(tmp_path / "peft"))
    assert ours.lora_config == LoraConfig(r=4, alpha=12, modules_to_save=("embedding", "output"))
    with torch.no_grad():
        torch.testing.assert_close(ours(IDS), hf_logits(peft_model.eval()), rtol=0, atol=1e-4)


def test_one_process_lora_run_saves_adapters_and_resumes_exactly(tmp_path, capsys):
    extra = ["--use_lora", "--lora_r", "4", "--lora_dropout", "0.1", "--lora_target_modules",
             "q,k,v,o,gate,up,down", "--learning_rate", "1e-2", "--prefix_lm_loss"]
    full = str(tmp_path / "full" / "m")
    run_in_process(pretrain_argv(full, dataset="alpaca", steps=4, save=2, extra=extra))
    log = capsys.readouterr().out
    base = tencentpretrain.build_model(TINY, VOCAB_SIZE, device="meta")
    total = sum(p.numel() for p in base.parameters()) + 9_760
    assert f"9,760 trainable of {total:,} parameters ({100 * 9_760 / total:.2f}%)" in log
    unbroken = logged_losses(log)
    with open(full + "-4.json") as f:
        assert json.load(f) == {"r": 4, "alpha": 16.0, "dropout": 0.1,
                                "targets": ["q", "k", "v", "o", "gate", "up", "down"],
                                "modules_to_save": []}
    step2, step4 = load_state_dict_file(full + "-2.safetensors"), load_state_dict_file(
        full + "-4.safetensors")
    assert len(step4) == 28 and all(".lora_" in name for name in step4)
    assert all(not torch.equal(step2[k], step4[k]) for k in step4)  # A and B both train
    final = load_state_dict_file(full + ".safetensors")  # the run's stable name: m + .json
    assert final.keys() == step4.keys() and all(torch.equal(final[k], step4[k]) for k in final)
    assert open(full + ".json").read() == open(full + "-4.json").read()

    resumed = str(tmp_path / "resumed" / "m")
    shutil.copytree(full + ".checkpoints/global_step2", resumed + ".checkpoints/global_step2")
    with open(resumed + ".checkpoints/latest", "w") as f:
        f.write("global_step2")
    run_in_process(pretrain_argv(resumed, dataset="alpaca", steps=4, save=2, extra=extra + [
        "--resume_from_checkpoint", resumed + ".checkpoints"]))
    after = logged_losses(capsys.readouterr().out)
    assert sorted(after) == [3, 4] and all(after[s] == unbroken[s] for s in after)
    again = load_state_dict_file(resumed + "-4.safetensors")
    assert all(torch.equal(again[k], step4[k]) for k in step4)


def test_continuing_from_an_adapter(tmp_path, capsys):
    """--lora_pretrained_model_path: step 1 starts from the adapter (its loss is the loss of
    base + adapter), and an option contradicting the adapter is refused."""
    base = str(tmp_path / "base.bin")
    torch.manual_seed(0)
    model = tencentpretrain.build_model(TINY, VOCAB_SIZE)
    model.init_weights()
    save_state_dict_file(model.state_dict(), base)
    first = str(tmp_path / "first" / "m")
    extra = ["--use_lora", "--lora_r", "2", "--learning_rate", "1e-2", "--pretrained_model_path",
             base]
    run_in_process(pretrain_argv(first, steps=2, save=2, extra=extra))
    one = logged_losses(capsys.readouterr().out)
    run_in_process(pretrain_argv(str(tmp_path / "second" / "m"), steps=2, save=2, extra=extra + [
        "--lora_pretrained_model_path", first + "-2"]))
    two = logged_losses(capsys.readouterr().out)
    assert two[1] < one[1]  # the same first batch, with the trained adapter
    with pytest.raises(TrainingError, match=r"--lora_r 4, but --lora_pretrained_model_path .* "
                                            r"has r 2"):
        run_in_process(pretrain_argv(str(tmp_path / "third" / "m"), extra=[
            "--use_lora", "--lora_r", "4", "--pretrained_model_path", base,
            "--lora_pretrained_model_path", first + "-2.safetensors"]))


@pytest.mark.parametrize("options, message", [
    (["--use_lora", "--lora_r", "0"], "--lora_r must be a positive integer, got 0"),
    (["--use_lora", "--lora_r", "-2"], "--lora_r must be a positive integer, got -2"),
    (["--use_lora", "--lora_alpha", "0"], "--lora_alpha must be positive, got 0.0"),
    (["--use_lora", "--lora_dropout", "1"], r"--lora_dropout must be in \[0, 1\), got 1.0"),
    (["--use_lora", "--lora_target_modules", "q,qkv"],
     "--lora_target_modules: unknown name 'qkv'; known: q, k, v, o, gate, up, down"),
    (["--use_lora", "--lora_modules_to_save", "lm_head"],
     "--lora_modules_to_save: unknown name 'lm_head'; known: embedding, output"),
    (["--lora_r", "4"], "--lora_r needs --use_lora"),
    (["--use_lora", "--lora_pretrained_model_path", "x"],
     "--lora_pretrained_model_path needs --pretrained_model_path"),
])
def test_bad_lora_options_are_one_line_errors(tmp_path, capsys, options, message):
    from pretrain import main
    with pytest.raises(SystemExit) as exit_info:
        main(pretrain_argv(str(tmp_path / "m"), extra=options))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: ") and __import__("re").search(message, err), err


def test_target_the_config_lacks(tmp_path):
    with open(TINY) as f:
        config = json.load(f)
    config["feed_forward"] = "dense"
    path = tmp_path / "dense.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"LoRA target 'gate' \(feed_forward.linear_gate\) is "
                                          r"not a linear layer of .*dense.json"):
        inject_lora(tencentpretrain.build_model(str(path), VOCAB, device="meta"), LoraConfig())


def test_adapter_that_does_not_fit_the_base(tmp_path):
    base, adapter, _ = write_base_and_adapter(tmp_path, TINY, LoraConfig(r=4))
    gqa_base = str(tmp_path / "gqa.bin")
    save_state_dict_file(base_model(TINY_GQA).state_dict(), gqa_base)
    with pytest.raises(WeightsError, match=r"adapter.safetensors: adapter tensor "
                       r"encoder.transformer.0.self_attn.linear_layers.1.lora_B has shape "
                       r"\(64, 4\), the model \(.*tiny_gqa_config.json\) needs \(16, 4\)"):
        tencentpretrain.load_model(TINY_GQA, gqa_base, lora_model_path=adapter)
    with pytest.raises(WeightsError, match="needs the base model it was trained on"):
        tencentpretrain.load_model(TINY, lora_model_path=adapter, vocab_size=VOCAB)
    os.remove(adapter.removesuffix(".safetensors") + ".json")
    with pytest.raises(WeightsError, match=r"adapter.safetensors: no .*adapter.json beside it"):
        tencentpretrain.load_model(TINY, base, lora_model_path=adapter)


def test_optimizer_holds_only_trainable_parameters():
    from tencentpretrain.training.engine import TorchBackend
    from tencentpretrain.training.trainer import setup_model
    from tests.conftest import one_process_settings
    backend = TorchBackend(one_process_settings())
    model = setup_model(backend, load_config(TINY), VOCAB, 7, None, 0, lambda step: 1.0,
                        lora=LoraConfig(r=2, modules_to_save=("output",)))
    in_optimizer = {id(p) for group in backend.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable and len(trainable) == 2 * 7 * 2 + 1
