"""Held-out loss during training (--eval_dataset_path, --eval_steps, --eval_batches,
--save_best): training is unchanged by it, the loss is evaluate_ppl.py's on the same weights,
a 2-rank ZeRO-3 run reports what one process reports, the best weights survive pruning."""
import contextlib
import io
import json
import os
import re

import pytest
import torch

from tencentpretrain.data import TokenDataset, preprocess
from tencentpretrain.errors import UserError
from tencentpretrain.training.validation import eval_batches
from tencentpretrain.utils.weights import load_state_dict_file
from tests.training_support import (DEMO_CORPUS, DEMO_INSTRUCTIONS, LLAMA_SPM, OTHER_SPM, TINY,
                                    ZERO3, datasets, logged_losses, pretrain_argv,
                                    run_in_process, run_script)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """An lm dataset of other text than the training set's, same tokenizer."""
    folder = tmp_path_factory.mktemp("held_out")
    with open(DEMO_CORPUS, encoding="utf-8") as f:
        lines = f.read().splitlines()[-12:]
    (folder / "text.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    preprocess(str(folder / "text.txt"), LLAMA_SPM, str(folder / "ds"), seq_length=64,
               progress=False)
    return str(folder / "ds")


def eval_losses(log):
    """{step: loss} of the `eval | step N | loss X | ppl Y` lines."""
    found = re.findall(r"eval \| step (\d+) \| loss ([0-9.]+) \| ppl ([0-9.]+)", log)
    for _, loss, ppl in found:
        assert float(ppl) == pytest.approx(2.718281828 ** float(loss), rel=1e-4)
    return {int(step): float(loss) for step, loss, _ in found}


def evaluate_ppl(weights, dataset, *extra):
    """The loss inference/evaluate_ppl.py prints for ``weights`` on ``dataset`` (its main, in
    this process: a new interpreter per call would double the test's time)."""
    from inference.evaluate_ppl import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        main(["--load_model_path", weights, "--config_path", TINY, "--spm_model_path",
              LLAMA_SPM, "--dataset_path", dataset, *extra])
    return float(re.search(r"loss: ([0-9.]+)", out.getvalue()).group(1))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, held_out):
    """One process, 6 steps of batch 4, with and without evaluation every 2 steps."""
    out = {}
    for name, extra in (("plain", []), ("eval", ["--eval_dataset_path", held_out,
                                                  "--eval_steps", "2"])):
        path = str(tmp_path_factory.mktemp(name) / "m")
        log = io.StringIO()  # module-scoped fixtures cannot use capsys
        with contextlib.redirect_stdout(log):
            run_in_process(pretrain_argv(path, steps=6, save=6, batch=4, extra=extra))
        out[name] = (path, log.getvalue())
    return out


def test_training_losses_are_the_same_with_and_without_evaluation(runs):
    plain, evaluated = logged_losses(runs["plain"][1]), logged_losses(runs["eval"][1])
    assert sorted(plain) == list(range(1, 7)) and evaluated == plain  # exactly
    log = runs["eval"][1]
    losses = eval_losses(log)
    assert sorted(losses) == [2, 4, 6]
    last, best = losses[6], min(losses.values())
    best_step = min(losses, key=losses.get)
    assert re.search(rf"eval loss +last {last:.4f} \(step 6\), best {best:.4f} "
                     rf"\(step {best_step}\)", log)
    assert "eval |" not in runs["plain"][1] and "eval loss" not in runs["plain"][1]
    weights = [load_state_dict_file(runs[name][0]) for name in ("plain", "eval")]
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_eval_loss_equals_evaluate_ppl(runs, held_out):
    path, log = runs["eval"]
    assert eval_losses(log)[6] == pytest.approx(evaluate_ppl(path, held_out), rel=1e-5)


@pytest.fixture(scope="module")
def held_out_instructions(tmp_path_factory):
    """Small alpaca datasets of the demo instructions, one example per sample and packed."""
    folder = tmp_path_factory.mktemp("held_out_alpaca")
    with open(DEMO_INSTRUCTIONS, encoding="utf-8") as f:
        examples = json.load(f)[:12]
    (folder / "a.json").write_text(json.dumps(examples, ensure_ascii=False), encoding="utf-8")
    for name, packing, seq_length in (("alpaca", False, 128), ("alpaca_packed", True, 256)):
        preprocess(str(folder / "a.json"), LLAMA_SPM, str(folder / name), data_processor="alpaca",
                   seq_length=seq_length, packing=packing, progress=False)
    return {name: str(folder / name) for name in ("alpaca", "alpaca_packed")}


@pytest.mark.parametrize("dataset", ["alpaca", "alpaca_packed"])
def test_prefix_lm_loss_and_packed_isolation(dataset, tmp_path, held_out_instructions, capsys):
    """Instruction data: answers only (--prefix_lm_loss), packed examples each alone."""
    held = held_out_instructions[dataset]
    assert TokenDataset(held).packed == (dataset == "alpaca_packed")
    out = str(tmp_path / "m")
    run_in_process(pretrain_argv(out, dataset=dataset, steps=2, save=2, batch=2, extra=[
        "--prefix_lm_loss", "--eval_dataset_path", held]))
    loss = eval_losses(capsys.readouterr().out)[2]  # only at the last step by default
    assert loss == pytest.approx(evaluate_ppl(out, held, "--prefix_lm_loss"), rel=1e-5)


def test_save_best_keeps_the_best_weights_through_pruning(tmp_path, held_out, capsys):
    out = str(tmp_path / "m")
    run_in_process(pretrain_argv(out, steps=4, save=1, batch=2, extra=[
        "--eval_dataset_path", held_out, "--eval_steps", "1", "--save_best",
        "--save_total_limit", "1", "--learning_rate", "3e-2"]))
    log = capsys.readouterr().out
    losses = eval_losses(log)
    best_step = min(losses, key=losses.get)
    with open(out + "-best.eval.json", encoding="utf-8") as f:
        assert json.load(f) == {"step": best_step, "loss": pytest.approx(losses[best_step],
                                                                         abs=1e-6)}
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("m-")) == [
        "m-4", "m-best", "m-best.eval.json"]  # --save_total_limit 1 pruned m-1..m-3 only
    assert f"best weights   {out}-best (step {best_step}, never pruned)" in log
    assert evaluate_ppl(out + "-best", held_out) == pytest.approx(losses[best_step], rel=1e-5)


def test_save_best_under_lora_keeps_the_adapter(tmp_path, held_out, capsys):
    out = str(tmp_path / "m")
    run_in_process(pretrain_argv(out, steps=2, save=2, batch=2, extra=[
        "--use_lora", "--eval_dataset_path", held_out, "--eval_steps", "1", "--save_best"]))
    log = capsys.readouterr().out
    assert f"best adapter   {out}-best.safetensors + {out}-best.json (step" in log
    assert os.path.isfile(out + "-best.safetensors") and os.path.isfile(out + "-best.eval.json")


def test_eval_batches_split_ranks_and_pad_the_last_global_batch(held_out):
    dataset = TokenDataset(held_out)
    n = len(dataset)
    assert n >= 3
    shares = [list(eval_batches(dataset, 2, rank, n)) for rank in range(n)]  # 2n places, n used
    assert [len(share) for share in shares] == [1] * n  # every rank runs as many forwards
    assert not shares[-1][0]["loss_mask"].any()  # a rank with no sample left counts nothing
    counted = sum(int(b["loss_mask"].sum()) for share in shares for b in share)
    alone = sum(int(b["loss_mask"].sum()) for b in eval_batches(dataset, n, 0, 1))
    assert counted == alone  # every sample once
    first_two = list(eval_batches(dataset, 1, 0, 1, max_batches=2))
    assert len(first_two) == 2
    assert first_two[1]["input_ids"][0].tolist() == dataset[1].tokens[:-1].tolist()


def test_held_out_dataset_guards_are_one_line(tmp_path, held_out):
    out = str(tmp_path / "m")
    with pytest.raises(UserError, match=r"^--eval_steps needs --eval_dataset_path"):
        run_in_process(pretrain_argv(out, extra=["--eval_steps", "2"]))
    with pytest.raises(UserError, match=r"^--eval_dataset_path .*/nowhere: no such folder"):
        run_in_process(pretrain_argv(out, extra=["--eval_dataset_path", str(tmp_path / "nowhere")]))
    with pytest.raises(UserError, match=r"^--data_processor lm, but .* was made with "
                                        r"--data_processor alpaca"):
        run_in_process(pretrain_argv(out, extra=["--eval_dataset_path", datasets()["alpaca"]]))
    other = str(tmp_path / "other")  # the same text, another tokenizer
    preprocess(DEMO_CORPUS, OTHER_SPM, other, seq_length=64, progress=False)
    with pytest.raises(UserError, match=rf"^{re.escape(other)} was made with another tokenizer"):
        run_in_process(pretrain_argv(out, extra=["--eval_dataset_path", other]))


def test_zero3_two_ranks_report_the_eval_loss_of_one_process(runs, held_out, tmp_path):
    """One deepspeed launch: 2 ranks x batch 2 read the samples one process reads with
    batch 4; the eval losses agree as the training losses do, and the last one is
    evaluate_ppl.py's on the run's own final weights."""
    out = str(tmp_path / "m")
    result = run_script(pretrain_argv(out, steps=6, save=6, batch=2, extra=[
        "--deepspeed", "--deepspeed_config", ZERO3, "--enable_zero3", "--world_size", "2",
        "--eval_dataset_path", held_out, "--eval_steps", "2"]),
        launcher=["deepspeed", "--num_gpus", "2"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    zero3 = eval_losses(result.stdout + result.stderr)
    one = eval_losses(runs["eval"][1])
    assert sorted(zero3) == sorted(one) == [2, 4, 6]
    for step in one:
        assert zero3[step] == pytest.approx(one[step], abs=2e-4), step
    assert zero3[6] == pytest.approx(evaluate_ppl(out, held_out), rel=1e-5)
