"""--data_processor seq2seq: source/target pairs (JSONL, TSV, alpaca records), --tgt_seq_length,
too-long sources/targets truncated or skipped (--too_long) and counted; a T5 tuned on a tiny
set lowers the loss and inference/generate_seq2seq.py reproduces a training target."""
import json
import os

import pytest

from tencentpretrain.data import TokenDataset, collate, preprocess
from tencentpretrain.data.builder import format_summary
from tencentpretrain.data.format import DatasetError
from tencentpretrain.data.processors.seq2seq import SOURCE_TOO_LONG, TARGET_TOO_LONG
from tencentpretrain.tokenizer import SpmTokenizer
from tests.conftest import ROOT
from tests.training_support import (LLAMA_SPM, T5_TINY, generate_seq2seq, logged_losses,
                                    run_main, train_t5)

PAIRS = [("translate to French: hello", "bonjour"),
         ("translate to French: thank you very much", "merci beaucoup"),
         ("translate to French: good night", "bonne nuit"),
         ("translate to French: the cat", "le chat")]


def write_jsonl(path, pairs):
    path.write_text("".join(json.dumps({"source": s, "target": t}, ensure_ascii=False) + "\n"
                            for s, t in pairs), encoding="utf-8")
    return str(path)


def pairs_of(dataset):
    ds = TokenDataset(dataset)
    return [(ds[i].tokens[:ds[i].prompt_length].tolist(), ds[i].tokens[ds[i].prompt_length:].tolist())
            for i in range(len(ds))]


def test_jsonl_tsv_and_alpaca_records_give_source_and_target_with_eos(tmp_path):
    spm = SpmTokenizer(LLAMA_SPM)
    eos = spm.eos_id
    jsonl = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    tsv = tmp_path / "pairs.tsv"
    tsv.write_text("".join(f"{s}\t{t}\n" for s, t in PAIRS) + "no tab here\n\n", encoding="utf-8")
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": "translate to French:", "input": "hello",
                                   "output": "bonjour"}]), encoding="utf-8")
    expected = [(spm.encode(s) + [eos], spm.encode(t) + [eos]) for s, t in PAIRS]
    preprocess(jsonl, LLAMA_SPM, str(tmp_path / "j"), data_processor="seq2seq", seq_length=64,
               progress=False, processor_options={})
    assert pairs_of(str(tmp_path / "j")) == expected
    summary = preprocess(str(tsv), LLAMA_SPM, str(tmp_path / "t"), data_processor="seq2seq",
                         seq_length=64, progress=False, processor_options={})
    assert pairs_of(str(tmp_path / "t")) == expected
    assert "line without a tab" in format_summary(summary)
    preprocess(str(alpaca), LLAMA_SPM, str(tmp_path / "a"), data_processor="seq2seq",
               seq_length=64, progress=False, processor_options={})
    assert pairs_of(str(tmp_path / "a")) == [(spm.encode("translate to French:\nhello") + [eos],
                                              spm.encode("bonjour") + [eos])]
    meta = json.load(open(tmp_path / "j" / "meta.json"))
    assert meta["holds"]["seq2seq"] and meta["data_processor"] == "seq2seq"
    ds = TokenDataset(str(tmp_path / "j"))
    batch = collate([ds[0], ds[1]], ds.pad_id)
    assert batch["tgt_ids"][:, 0].tolist() == [ds.pad_id] * 2
    assert batch["labels"][0, :len(expected[0][1])].tolist() == expected[0][1]


def test_too_long_sources_and_targets_are_truncated_or_skipped_and_counted(tmp_path):
    spm = SpmTokenizer(LLAMA_SPM)
    # "a" and "ok" are at most 2 tokens with LLaMA's and the demo tokenizer alike
    pairs = [("a", "ok"), ("a much longer source sentence than four tokens", "ok"),
             ("a", "a much longer target sentence than the limit")]
    corpus = write_jsonl(tmp_path / "long.jsonl", pairs)
    summary = preprocess(corpus, LLAMA_SPM, str(tmp_path / "t"), data_processor="seq2seq",
                         seq_length=4, progress=False, processor_options={"tgt_seq_length": 3})
    got = pairs_of(str(tmp_path / "t"))
    assert len(got) == 3 and summary["documents"] == 3
    assert got[1][0] == spm.encode(pairs[1][0])[:3] + [spm.eos_id]
    assert got[2][1] == spm.encode(pairs[2][1])[:2] + [spm.eos_id]
    assert "truncated  2 pairs" in format_summary(summary)
    summary = preprocess(corpus, LLAMA_SPM, str(tmp_path / "s"), data_processor="seq2seq",
                         seq_length=4, progress=False,
                         processor_options={"tgt_seq_length": 3, "too_long": "skip"})
    assert pairs_of(str(tmp_path / "s")) == [got[0]]
    assert summary["skipped"] == {SOURCE_TOO_LONG: 1, TARGET_TOO_LONG: 1}
    text = format_summary(summary)
    assert "1 source too long" in text and "1 target too long" in text
    with pytest.raises(DatasetError, match="--tgt_seq_length"):
        preprocess(corpus, LLAMA_SPM, str(tmp_path / "x"), data_processor="seq2seq",
                   seq_length=4, progress=False, processor_options={"tgt_seq_length": 0})


def test_preprocess_options_belong_to_their_processor(tmp_path):
    from preprocess import main
    corpus = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    assert main(["--corpus_path", corpus, "--spm_model_path", LLAMA_SPM, "--dataset_path",
                 str(tmp_path / "d"), "--data_processor", "seq2seq", "--seq_length", "32",
                 "--tgt_seq_length", "8", "--too_long", "skip", "--no_progress"]) == 0
    assert json.load(open(tmp_path / "d" / "meta.json"))["prompt_template"] == {
        "seq2seq": {"tgt_seq_length": 8, "too_long": "skip"}}
    with pytest.raises(SystemExit) as refused:
        main(["--corpus_path", corpus, "--spm_model_path", LLAMA_SPM, "--dataset_path",
              str(tmp_path / "e"), "--data_processor", "lm", "--tgt_seq_length", "8",
              "--no_progress"])
    assert refused.value.code == 2


def test_seq2seq_tuning_lowers_the_loss_and_generation_reproduces_a_target(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "tiny.jsonl", PAIRS)
    data = str(tmp_path / "ds")
    preprocess(corpus, LLAMA_SPM, data, data_processor="seq2seq", seq_length=32,
               progress=False, processor_options={"tgt_seq_length": 16})
    out = str(tmp_path / "t5")
    losses = logged_losses(train_t5(data, LLAMA_SPM, out, "seq2seq", 80, 4, 1e-2, capsys,
                                    report=10))
    assert losses[80] < losses[10] / 4, losses
    predictions = generate_seq2seq(out, T5_TINY, LLAMA_SPM, [s for s, _ in PAIRS],
                                   tmp_path / "pred.txt", 8, capsys)
    assert sum(p == t for p, (_, t) in zip(predictions, PAIRS)) >= 3, predictions
    # evaluate_ppl.py on the seq2seq dataset: target-side perplexity (target tokens counted)
    from inference.evaluate_ppl import main as evaluate_ppl
    status, out_text, err = run_main(evaluate_ppl, [
        "--load_model_path", out, "--config_path", T5_TINY, "--spm_model_path", LLAMA_SPM,
        "--dataset_path", data], capsys)
    assert status == 0, err[-2000:]
    spm = SpmTokenizer(LLAMA_SPM)
    targets = sum(len(spm.encode(t)) + 1 for _, t in PAIRS)
    assert f"tokens: {targets} " in out_text, out_text + err


def test_seq2seq_tuning_on_the_alpaca_demo_with_held_out_loss(tmp_path, capsys):
    """The alpaca demo as source/target pairs: tuning lowers the training and the held-out
    loss (pretrain.py --eval_dataset_path), and generate_seq2seq.py writes a target a line."""
    import re
    data = str(tmp_path / "ds")
    preprocess(os.path.join(ROOT, "demo", "instructions.json"), LLAMA_SPM, data,
               data_processor="seq2seq", seq_length=64, progress=False,
               processor_options={"tgt_seq_length": 64})
    out = str(tmp_path / "t5")
    log = train_t5(data, LLAMA_SPM, out, "seq2seq", 20, 8, 1e-2, capsys,
                   extra=["--eval_dataset_path", data, "--eval_steps", "10"])
    losses = logged_losses(log)
    assert losses[20] < losses[1] - 1.0, losses
    evals = [float(x) for x in re.findall(r"eval \| step \d+ \| loss ([0-9.]+)", log)]
    assert len(evals) == 2 and evals[1] < evals[0], evals
    predictions = generate_seq2seq(out, T5_TINY, LLAMA_SPM,
                                   ["What is five plus three?", "Name a color."],
                                   tmp_path / "pred.txt", 16, capsys)
    assert len(predictions) == 2
