"""What a run was started from is recorded in its checkpoints and adapters and checked when
they are used again: the checkpoint's kind (LoRA or full), model config, LoRA settings, base
and dataset on resume; an adapter's base when it is loaded, merged or continued. Each
refusal is one line naming the option or file, and nothing is written."""
import json
import os
import re
import shutil

import pytest
import torch

import pretrain
import tencentpretrain
from tencentpretrain.adapters import adapter_base, base_fingerprint, base_record, save_adapter
from tencentpretrain.layers.lora import (LoraConfig, adapter_names, inject_lora,
                                         merge_into_state_dict)
from tencentpretrain.training import TrainingError
from tencentpretrain.utils.weights import LazyWeights, save_state_dict_file
from tests.training_support import (LLAMA_SPM, LM_CORPUS, TINY, VOCAB_SIZE, _preprocess, datasets,
                                    logged_losses, pretrain_argv, run_in_process)


LORA = ["--use_lora", "--lora_r", "2", "--lora_target_modules", "q,v",
        "--lora_modules_to_save", "output", "--learning_rate", "1e-2"]


def tiny_base(path, seed, vocab=VOCAB_SIZE, dtype=None):
    torch.manual_seed(seed)
    model = tencentpretrain.build_model(TINY, vocab)
    model.init_weights()
    state = model.state_dict()
    if dtype is not None:
        state = {name: t.to(dtype) for name, t in state.items()}
    save_state_dict_file(state, str(path))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two bases, a LoRA run on the first and a full run, each saved at step 2 of 2."""
    root = tmp_path_factory.mktemp("runs")
    base = tiny_base(root / "base.bin", 0)
    other = tiny_base(root / "other.safetensors", 1)
    lora = str(root / "lora" / "m")
    run_in_process(pretrain_argv(lora, steps=2, save=2,
                                 extra=LORA + ["--pretrained_model_path", base]))
    full = str(root / "full" / "m")
    run_in_process(pretrain_argv(full, steps=2, save=2))
    return {"base": base, "other": other, "lora": lora, "full": full, "root": root}


def snapshot(root):
    paths = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]
    return sorted((os.path.relpath(p, root), os.stat(p).st_mtime_ns) for p in paths)


def refused(root, argv, capsys):
    """pretrain.py's one line for ``argv`` (exit status 2), checking nothing was written."""
    before = snapshot(root)
    with pytest.raises(SystemExit) as exit_info:
        pretrain.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert snapshot(root) == before
    return err.removeprefix("error: ").strip()


def resume_argv(out, steps=4, extra=()):
    return pretrain_argv(out, steps=steps, save=2,
                         extra=[*extra, "--resume_from_checkpoint", out + ".checkpoints"])


def copy_run(out, target):
    """A run's checkpoints under another name, to resume without touching the original."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copytree(out + ".checkpoints", target + ".checkpoints")
    return target


def test_lora_checkpoint_resumed_without_use_lora(runs, capsys):
    line = refused(runs["root"], resume_argv(runs["lora"], extra=[
        "--pretrained_model_path", runs["base"]]), capsys)
    assert line == (f"--resume_from_checkpoint {runs['lora']}.checkpoints: the checkpoint holds "
                    "LoRA adapters on a frozen base, not a full model; resume it with --use_lora "
                    "--lora_r 2 --lora_alpha 16 --lora_target_modules q,v --lora_modules_to_save "
                    "output (its settings), or merge its adapter (scripts/merge_lora.py) to "
                    "train the whole model")


def test_full_checkpoint_resumed_with_use_lora(runs, capsys):
    line = refused(runs["root"], resume_argv(runs["full"], extra=LORA), capsys)
    assert line == (f"--resume_from_checkpoint {runs['full']}.checkpoints: the checkpoint holds "
                    "full-model training, no LoRA adapters; resume it without --use_lora, or "
                    "start a new LoRA run on its weights (--pretrained_model_path "
                    f"{runs['full']}-2)")


def test_resume_with_another_model_config(runs, tmp_path, capsys):
    with open(TINY) as f:
        config = json.load(f)
    config["feedforward_size"] = 200
    other = tmp_path / "wider.json"
    other.write_text(json.dumps(config))
    argv = resume_argv(runs["full"])
    argv[argv.index("--config_path") + 1] = str(other)
    line = refused(runs["root"], argv, capsys)
    assert line == (f"--resume_from_checkpoint {runs['full']}.checkpoints: saved with model "
                    f"config {TINY} (feedforward_size 172), --config_path {other} has "
                    "feedforward_size 200; resume with the checkpoint's config")


def test_resume_with_other_lora_settings(runs, capsys):
    extra = [*LORA, "--pretrained_model_path", runs["base"]]
    extra[extra.index("--lora_r") + 1] = "4"
    line = refused(runs["root"], resume_argv(runs["lora"], extra=extra), capsys)
    assert line.endswith("the checkpoint's adapters have r 2, this run asks for 4; resume with "
                         "--use_lora --lora_r 2 --lora_alpha 16 --lora_target_modules q,v "
                         "--lora_modules_to_save output")


def test_lora_resume_on_another_or_no_base(runs, tmp_path, capsys):
    fingerprint = base_fingerprint(LazyWeights(runs["base"]))
    other_fingerprint = base_fingerprint(LazyWeights(runs["other"]))
    name = f"--resume_from_checkpoint {runs['lora']}.checkpoints"
    line = refused(runs["root"], resume_argv(runs["lora"], extra=[
        *LORA, "--pretrained_model_path", runs["other"]]), capsys)
    assert line == (f"{name}: the adapters were trained on base {runs['base']} (fingerprint "
                    f"{fingerprint[:12]}), --pretrained_model_path {runs['other']} is another "
                    f"(fingerprint {other_fingerprint[:12]}); pass that base, or "
                    "--allow_changed_base to train these adapters on this one")
    assert len(line) < 400  # two temporary paths in it
    line = refused(runs["root"], resume_argv(runs["lora"], extra=LORA), capsys)
    assert line == (f"{name}: the adapters were trained on base {runs['base']} (fingerprint "
                    f"{fingerprint[:12]}); without --pretrained_model_path they would train on "
                    "a random base; pass that base, or --allow_changed_base to train these "
                    "adapters on this one")

    out = copy_run(runs["lora"], str(tmp_path / "again" / "m"))
    run_in_process(resume_argv(out, extra=[*LORA, "--pretrained_model_path", runs["other"],
                                           "--allow_changed_base"]))
    log = capsys.readouterr().out
    assert "note: the adapters were trained on base" in log and "(--allow_changed_base)" in log
    assert sorted(logged_losses(log)) == [3, 4]
    # the adapter saved by the resumed run records the base it was trained on last
    assert adapter_base(out + "-4") == (runs["other"], other_fingerprint)


def test_resume_on_a_reprocessed_dataset(runs, tmp_path, capsys):
    shorter = _preprocess(LM_CORPUS, LLAMA_SPM, str(tmp_path / "lm32"), "lm", 32)
    argv = resume_argv(runs["full"])
    argv[argv.index("--dataset_path") + 1] = shorter
    line = refused(runs["root"], argv, capsys)
    assert line == (f"--resume_from_checkpoint {runs['full']}.checkpoints: the run trained on "
                    f"{datasets()['lm']} (seq_length 64), --dataset_path {shorter} has seq_length "
                    "32, so the saved data position means other samples; pass that dataset, or "
                    "--allow_changed_dataset to continue on this one")
    out = copy_run(runs["full"], str(tmp_path / "again" / "m"))
    argv = resume_argv(out, extra=["--allow_changed_dataset"])
    argv[argv.index("--dataset_path") + 1] = shorter
    run_in_process(argv)
    log = capsys.readouterr().out
    assert "note: the run trained on" in log and "(--allow_changed_dataset)" in log
    assert sorted(logged_losses(log)) == [3, 4]


def without_record(run, target):
    """A copy of ``run``'s checkpoints as saves made before checkpoints recorded their run."""
    out = copy_run(run, target)
    state_file = out + ".checkpoints/global_step2/trainer_state_rank0.json"
    with open(state_file) as f:
        state = json.load(f)
    assert state["run"]["model_config"]["feedforward_size"] == 172  # what is recorded
    assert state["run"]["dataset"]["seq_length"] == 64
    del state["run"]
    with open(state_file, "w") as f:
        json.dump(state, f)
    return out


def test_checkpoint_without_a_record_still_resumes(runs, tmp_path, capsys):
    out = without_record(runs["full"], str(tmp_path / "old" / "m"))
    run_in_process(resume_argv(out))
    log = capsys.readouterr().out
    assert "was saved before checkpoints recorded their model config" in log
    assert sorted(logged_losses(log)) == [3, 4]


def test_checkpoint_without_a_record_and_the_wrong_use_lora_is_one_line(runs, tmp_path,
                                                                        capsys):
    """Nothing recorded to check first: torch's state-dict error, said in one line."""
    full = without_record(runs["full"], str(tmp_path / "full" / "m"))
    line = refused(tmp_path, resume_argv(full, extra=LORA), capsys)
    assert line == (f"--resume_from_checkpoint {full}.checkpoints: the checkpoint holds "
                    "full-model training, no LoRA adapters; resume it without --use_lora")
    lora = without_record(runs["lora"], str(tmp_path / "lora" / "m"))
    line = refused(tmp_path, resume_argv(lora), capsys)
    assert line == (f"--resume_from_checkpoint {lora}.checkpoints: the checkpoint holds LoRA "
                    "adapters on a frozen base, not a full model; resume it with --use_lora "
                    "and the --lora_* settings it was trained with")
    with open(TINY) as f:
        config = json.load(f)
    config["feedforward_size"] = 200
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps(config))
    argv = resume_argv(full)
    argv[argv.index("--config_path") + 1] = str(wider)
    line = refused(tmp_path, argv, capsys)
    assert line == (f"--resume_from_checkpoint {full}.checkpoints: its "
                    "encoder.transformer.0.feed_forward.linear_gate.weight has shape "
                    "torch.Size([172, 64]), this run's model torch.Size([200, 64]); resume with "
                    "the checkpoint's --config_path")


def test_lora_run_records_its_base_and_names_its_final_files(runs, capsys):
    out = runs["lora"]
    fingerprint = base_fingerprint(LazyWeights(runs["base"]))
    for name in (out + "-2", out):
        with open(name + ".json") as f:
            settings = json.load(f)
        assert settings["base_model"] == runs["base"]
        assert settings["base_fingerprint"] == fingerprint
    # the end message names the files that exist (OUT.safetensors + OUT.json), not OUT
    extra = LORA + ["--pretrained_model_path", runs["base"]]
    second = os.path.join(os.path.dirname(out), "second")
    run_in_process(pretrain_argv(second, steps=1, save=1, extra=extra))
    log = capsys.readouterr().out
    assert f"final adapter also at {second}.safetensors + {second}.json" in log
    assert os.path.isfile(second + ".safetensors") and os.path.isfile(second + ".json")
    assert not os.path.exists(second)


def test_continuing_an_adapter_on_another_base(runs, tmp_path, capsys):
    adapter = runs["lora"] + "-2"
    argv = pretrain_argv(str(tmp_path / "next" / "m"), steps=1, save=1, extra=[
        *LORA[:1], "--pretrained_model_path", runs["other"], "--lora_pretrained_model_path",
        adapter])
    with pytest.raises(TrainingError) as error:
        run_in_process(argv)
    assert str(error.value) == (
        f"--lora_pretrained_model_path: adapter {adapter} was trained on base {runs['base']} "
        f"(fingerprint {base_fingerprint(LazyWeights(runs['base']))[:12]}), not on "
        f"--pretrained_model_path {runs['other']} (fingerprint "
        f"{base_fingerprint(LazyWeights(runs['other']))[:12]}: another base, or the base with an "
        "adapter already merged in); pass its base, or --allow_changed_base to continue it on "
        "this one")
    assert not os.path.exists(tmp_path / "next")
    run_in_process(argv + ["--allow_changed_base"])
    assert "continuing it on this base (--allow_changed_base)" in capsys.readouterr().out


# ---- adapters outside training: merge and load onto the base they were trained on ----

VOCAB = 320
IDS = torch.tensor([[1, 17, 250, 3, 99, 42, 7, 300]])


@pytest.fixture
def adapter_on_base(tmp_path):
    """(base file, adapter file recording it, another base file of the same shape)."""
    base = tiny_base(tmp_path / "base.bin", 0, VOCAB)
    other = tiny_base(tmp_path / "other.bin", 1, VOCAB)
    model = tencentpretrain.load_model(TINY, base)
    lora = LoraConfig(r=2, modules_to_save=("output",))
    inject_lora(model, lora)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    params = dict(model.named_parameters())
    state = {name: params[name].detach().clone() for name in adapter_names(model)}
    adapter = save_adapter(str(tmp_path / "adapter"), lora, state,
                           base_record(base, base_fingerprint(LazyWeights(base))))
    return base, adapter, other


def merge(base, adapter, output, *extra):
    from scripts.merge_lora import main
    main(["--base_model_path", base, "--lora_model_path", adapter, "--config_path", TINY,
          "--output_model_path", output, *extra])


def test_merge_lora_refuses_another_base_and_names_modules_to_save(adapter_on_base, tmp_path,
                                                                   capsys):
    base, adapter, other = adapter_on_base
    merged = str(tmp_path / "merged.bin")
    merge(base, adapter, merged)
    out = capsys.readouterr().out
    assert out.strip().endswith("(r 2, alpha 16, q,k,v,o,gate,up,down; modules_to_save replaced: "
                                "output (target.lm.output_layer.weight))")
    for wrong in (other, merged):  # another base of the same shape; the already-merged model
        target = str(tmp_path / "again.bin")
        with pytest.raises(SystemExit) as exit_info:
            merge(wrong, adapter, target)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and err.count("\n") == 1
        assert re.fullmatch(
            rf"error: adapter {re.escape(adapter)} was trained on base {re.escape(base)} "
            rf"\(fingerprint [0-9a-f]{{12}}\), not on --base_model_path {re.escape(wrong)} "
            r"\(fingerprint [0-9a-f]{12}: another base, or the base with an adapter already "
            r"merged in\); pass the base it was trained on, or --allow_other_base\n", err), err
        assert not os.path.exists(target)
    merge(other, adapter, target, "--allow_other_base")
    assert "merging anyway (--allow_other_base)" in capsys.readouterr().out


def test_loading_an_adapter_onto_another_base_warns(adapter_on_base, capsys):
    base, adapter, other = adapter_on_base
    tencentpretrain.load_model(TINY, base, lora_model_path=adapter)
    assert capsys.readouterr().err == ""
    model = tencentpretrain.load_model(TINY, other, lora_model_path=adapter)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: adapter {adapter} was trained on "
                                                   f"base {base} (fingerprint ")
    assert "not on this base" in err and err.strip().endswith("not be the trained ones")
    assert model(IDS).shape[-1] == VOCAB  # it still loads
    # an adapter saved before adapters recorded their base loads without a word
    settings = adapter.removesuffix(".safetensors") + ".json"
    with open(settings) as f:
        raw = {k: v for k, v in json.load(f).items() if not k.startswith("base_")}
    with open(settings, "w") as f:
        json.dump(raw, f)
    tencentpretrain.load_model(TINY, other, lora_model_path=adapter)
    assert capsys.readouterr().err == ""


def test_fingerprint(tmp_path):
    """The same for a file, its state dict, the model, a bf16 copy and another format;
    different for another base and for the base with an adapter merged in."""
    base = tiny_base(tmp_path / "base.bin", 0, VOCAB)
    fingerprint = base_fingerprint(LazyWeights(base))
    model = tencentpretrain.load_model(TINY, base)
    assert base_fingerprint(model) == fingerprint == base_fingerprint(model.state_dict())
    bf16 = tiny_base(tmp_path / "base_bf16.safetensors", 0, VOCAB, torch.bfloat16)
    assert base_fingerprint(LazyWeights(bf16)) == fingerprint
    assert base_fingerprint(LazyWeights(tiny_base(tmp_path / "o.bin", 1, VOCAB))) != fingerprint
    inject_lora(model, LoraConfig(r=2, targets=("v",)))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 0.05)
    state = model.state_dict()
    adapter = {name: state[name] for name in adapter_names(model)}
    base_state = {name: tensor for name, tensor in state.items() if name not in adapter}
    merged = merge_into_state_dict(base_state, adapter, model.lora_config, model.config)
    assert base_fingerprint(merged) != fingerprint


def test_help_shows_each_default_once(capsys):
    with pytest.raises(SystemExit):
        pretrain.main(["--help"])
    out = capsys.readouterr().out
    entries = re.split(r"\n(?=  -)", out)  # each option's entry starts a line with "  -"
    assert len(entries) > 40
    for entry in entries:
        assert " ".join(entry.split()).count("default") <= 1, entry
    text = " ".join(out.split())
    assert "Rank (default: 8, or the --lora_pretrained_model_path adapter's)." in text
    assert "--allow_changed_base" in text and "--allow_changed_dataset" in text
