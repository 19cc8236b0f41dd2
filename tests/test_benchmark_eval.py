"""Multiple-choice benchmarks (C-Eval, CMMLU, MMLU): the three CSV layouts with their awkward
cases, the prompts character for character, cached-prefix scoring equal to a full forward and
to transformers on the HF export, shot dropping and skipping, both averages, and the CLI."""
import csv
import json
import os

import pytest
import torch

import tencentpretrain
from tencentpretrain.benchmarks.evaluate import evaluate_benchmark
from tencentpretrain.benchmarks.formats import (LAYOUTS, BenchmarkError, Question, Subject,
                                                read_questions, subject_table)
from tencentpretrain.benchmarks.prompts import (Prompt, build_prompts, continuations, header,
                                                question_text)
from tencentpretrain.benchmarks.report import SubjectResult, predict, summarize
from tencentpretrain.benchmarks.scoring import ChoiceScorer, encode_question
from tencentpretrain.prompts import ALPACA_TEMPLATE, build_prompt
from tencentpretrain.tokenizer import SpmTokenizer
from tencentpretrain.utils.weights import save_state_dict_file
from tests.conftest import ROOT
from tests.training_support import run_main

TINY = os.path.join(ROOT, "models", "llama", "tiny_config.json")
WORDS = ("alpha beta gamma delta river mountain 北京 上海 数学 物理 history law, \"quoted\" "
         "value 3.14 energy cell protein market").split()


def write_csv(path, rows, header=None, bom=False):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8-sig" if bom else "utf-8", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def text(seed, n):
    return " ".join(WORDS[(seed * 7 + i * 3) % len(WORDS)] for i in range(n))


SUBJECTS = {"ceval": ("law", "high_school_physics"), "mmlu": ("professional_law", "astronomy"),
            "cmmlu": ("college_law", "high_school_physics")}


def make_benchmark(root, task, subjects=None, questions=6, shots=5, split=None, answers=True):
    """A small data folder in ``task``'s layout (dev/ and ``split``, default val, CMMLU's
    test); the questions vary in length and answer."""
    layout = LAYOUTS[task]
    subjects = subjects or SUBJECTS[task]
    split = split or ("test" if task == "cmmlu" else "val")
    for s_index, subject in enumerate(subjects):
        for part, count in (("dev", shots), (split, questions)):
            rows = []
            for i in range(count):
                seed = 31 * s_index + 7 * i + (part == "dev")
                answer = "ABCD"[seed % 4] if answers or part == "dev" else ""
                fields = [text(seed, 5 + seed % 9), *(text(seed + k, 1 + k) for k in range(4)),
                          answer]
                rows.append({"ceval": [i, *fields], "cmmlu": [i, *fields], "mmlu": fields}[task])
            header = {"ceval": ["id", "question", "A", "B", "C", "D", "answer"],
                      "cmmlu": ["", "Question", "A", "B", "C", "D", "Answer"], "mmlu": None}[task]
            write_csv(layout.path(str(root), part, subject), rows, header, bom=s_index == 1)
    return str(root)


@pytest.fixture(scope="module")
def tokenizer(llama_spm):
    return SpmTokenizer(llama_spm)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random tiny model with large weights (varied predictions), saved as a .bin."""
    torch.manual_seed(5)
    model = tencentpretrain.build_model(TINY, 32000)
    model.init_weights(std=0.5)
    path = tmp_path_factory.mktemp("bench") / "tiny.bin"
    save_state_dict_file(model.state_dict(), str(path))
    return str(path)


@pytest.fixture(scope="module")
def model(weights):
    return tencentpretrain.load_model(TINY, weights)


# --- formats -----------------------------------------------------------------------------

def test_ceval_quoted_commas_newlines_bom_and_test_without_answers(tmp_path):
    path = tmp_path / "law_val.csv"
    path.write_bytes("\ufeffid,question,A,B,C,D,answer,explanation\r\n"
                     '0,"逗号,在这里\n第二行",一,"二,二",三,四,B,"解释, 带逗号"\r\n'
                     "1,短,a,b,c,d,D,\r\n\r\n".encode("utf-8"))
    first, second = read_questions(LAYOUTS["ceval"], str(path))
    assert first == Question("0", "逗号,在这里\n第二行", ("一", "二,二", "三", "四"), "B",
                             f"{path}:2")
    assert second.where == f"{path}:4" and second.answer == "D"  # after a two-line record
    no_column = tmp_path / "law_test.csv"
    no_column.write_text("id,question,A,B,C,D\n0,q,a,b,c,d\n", encoding="utf-8")
    empty_cell = tmp_path / "law_test2.csv"
    empty_cell.write_text("id,question,A,B,C,D,answer\n7,q,a,b,c,d,\n", encoding="utf-8")
    assert read_questions(LAYOUTS["ceval"], str(no_column))[0].answer is None
    assert read_questions(LAYOUTS["ceval"], str(empty_cell))[0] == Question(
        "7", "q", ("a", "b", "c", "d"), None, f"{empty_cell}:2")


def test_cmmlu_index_column_and_mmlu_headerless(tmp_path):
    cmmlu = tmp_path / "arts.csv"
    cmmlu.write_bytes("\ufeff,Question,A,B,C,D,Answer\n0,\"画,画\",甲,乙,丙,丁,C\n".encode())
    assert read_questions(LAYOUTS["cmmlu"], str(cmmlu)) == [
        Question("0", "画,画", ("甲", "乙", "丙", "丁"), "C", f"{cmmlu}:2")]
    mmlu = tmp_path / "anatomy_test.csv"
    mmlu.write_text('"What, in short,\nis this?",one,two,three,"four, five",A\nNext?,a,b,c,d,B\n',
                    encoding="utf-8")
    first, second = read_questions(LAYOUTS["mmlu"], str(mmlu))
    assert first == Question("0", "What, in short,\nis this?", ("one", "two", "three",
                                                               "four, five"), "A", f"{mmlu}:1")
    assert (second.id, second.where) == ("1", f"{mmlu}:3")  # the row number is the id


def test_format_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "x_val.csv"
    bad.write_text('id,question,A,B,C,D,answer\n0,"two\nlines",a,b,c,d,A\n1,q,a,b,c,d,E\n')
    with pytest.raises(BenchmarkError, match=rf"^{bad}:4: answer 'E' is not one of A, B, C, D$"):
        read_questions(LAYOUTS["ceval"], str(bad))
    bad.write_text("id,question,A,B,C,answer\n")
    with pytest.raises(BenchmarkError, match=rf"^{bad}:1: no 'D' column"):
        read_questions(LAYOUTS["ceval"], str(bad))
    bad.write_text("q,a,b\n")
    with pytest.raises(BenchmarkError, match=rf"^{bad}:1: 3 fields"):
        read_questions(LAYOUTS["mmlu"], str(bad))


def test_subject_tables_and_mapping_file(tmp_path):
    ceval, cmmlu, mmlu = LAYOUTS["ceval"], LAYOUTS["cmmlu"], LAYOUTS["mmlu"]
    assert ceval.subject("clinical_medicine", {}) == Subject("clinical_medicine", "临床医学",
                                                             ("Other",))
    assert cmmlu.subject("ancient_chinese", {}).categories == ("Social Science", "China specific")
    assert mmlu.subject("high_school_us_history", {}) == Subject(
        "high_school_us_history", "high school us history", ("Humanities",))
    assert len(ceval.table) == 52 and len(cmmlu.table) == 67 and len(mmlu.table) == 57
    (tmp_path / "subject_mapping.json").write_text(json.dumps(
        {"new_subject": ["New", "新科目", "STEM"], "law": ["Law", "法律学"]}))
    mapping = subject_table(str(tmp_path))
    assert ceval.subject("new_subject", mapping) == Subject("new_subject", "新科目", ("STEM",))
    assert ceval.subject("law", mapping) == Subject("law", "法律学", ("Other",))
    with pytest.raises(BenchmarkError, match="'unknown' is not in the built-in table"):
        cmmlu.subject("unknown", mapping)


# --- prompts -----------------------------------------------------------------------------

QUESTION = Question("1", "Which one?", ("first", "second", "third", "fourth"), "C")
SHOTS = [Question("0", "Shot one?", ("w", "x", "y", "z"), "B"),
         Question("2", "Shot two?", ("p", "q", "r", "s"), "D")]
EXPECTED = {  # the templates, written out
    "ceval": ("以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n\n"
              "Shot one?\nA. w\nB. x\nC. y\nD. z\n答案：B\n\n"
              "Shot two?\nA. p\nB. q\nC. r\nD. s\n答案：D\n\n",
              "Which one?\nA. first\nB. second\nC. third\nD. fourth\n答案：", "A"),
    "cmmlu": ("以下是关于法学的单项选择题，请直接给出正确答案的选项。\n\n"
              "题目：Shot one?\nA. w\nB. x\nC. y\nD. z\n答案是：B\n\n"
              "题目：Shot two?\nA. p\nB. q\nC. r\nD. s\n答案是：D\n\n",
              "题目：Which one?\nA. first\nB. second\nC. third\nD. fourth\n答案是：", "A"),
    "mmlu": ("The following are multiple choice questions (with answers) about high school "
             "physics.\n\n"
             "Shot one?\nA. w\nB. x\nC. y\nD. z\nAnswer: B\n\n"
             "Shot two?\nA. p\nB. q\nC. r\nD. s\nAnswer: D\n\n",
             "Which one?\nA. first\nB. second\nC. third\nD. fourth\nAnswer:", " A"),
}


def subject_of(task):
    return (Subject("law", "法学", ("Humanities",)) if task != "mmlu" else
            LAYOUTS["mmlu"].subject("high_school_physics", {}))


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_prompt_strings_and_ids_equal_the_whole_prompt(task, tokenizer):
    prefix, query, answer_a = EXPECTED[task]
    subject = subject_of(task)
    assert header(task, subject) + "".join(question_text(task, s, True) for s in SHOTS) == prefix
    assert question_text(task, QUESTION) == query
    assert continuations(task)[0] == answer_a
    [prompt] = build_prompts(task, subject, [QUESTION], SHOTS, tokenizer, 1024)
    encoded = prompt.encoded
    bos = [tokenizer.bos_id]
    assert encoded.prefix_ids == bos + tokenizer.encode(prefix)
    assert encoded.prompt_ids == bos + tokenizer.encode(prefix + query)
    assert encoded.wholes == [bos + tokenizer.encode(prefix + query + c)
                              for c in continuations(task)]
    [row] = encoded.cached_rows()  # the letters are one token each: one row scores all four
    assert row.ids == encoded.prompt_ids
    assert [row.ids[:start + 1] + target for _, start, target in row.scored] == encoded.wholes
    letter = tokenizer.id_to_piece(encoded.wholes[0][-1])
    assert letter == ("▁A" if task == "mmlu" else "A")


def test_template_wraps_the_zero_shot_question(tokenizer):
    [prompt] = build_prompts("ceval", subject_of("ceval"), [QUESTION], [], tokenizer, 1024,
                             ALPACA_TEMPLATE)
    text = build_prompt(EXPECTED["ceval"][0].split("\n\n")[0] + "\n\n" + EXPECTED["ceval"][1])
    assert prompt.encoded.prompt_ids == [tokenizer.bos_id] + tokenizer.encode(text)
    assert prompt.encoded.wholes[1] == [tokenizer.bos_id] + tokenizer.encode(text + "B")
    with pytest.raises(BenchmarkError, match="0-shot"):
        build_prompts("ceval", subject_of("ceval"), [QUESTION], SHOTS, tokenizer, 1024,
                      ALPACA_TEMPLATE)


def test_longest_shot_dropped_and_too_long_question_skipped(tokenizer):
    task, subject = "mmlu", subject_of("mmlu")
    shots = [Question("0", "Short?", ("a", "b", "c", "d"), "A"),
             Question("1", "A much longer shot " + "word " * 40, ("a", "b", "c", "d"), "B"),
             Question("2", "Also short?", ("a", "b", "c", "d"), "C")]
    long_question = Question("9", "Far too long " + "word " * 200, ("a", "b", "c", "d"), "A")
    fits = header(task, subject) + question_text(task, shots[0], True) + question_text(
        task, shots[2], True) + question_text(task, QUESTION)
    limit = len(tokenizer.encode(fits)) + 2  # bos + prompt + " D": shots 0 and 2 fit, 1 not
    short, skipped = build_prompts(task, subject, [QUESTION, long_question], shots, tokenizer,
                                   limit)
    assert (short.shots, short.dropped) == (2, 1)
    assert short.encoded.prompt_ids == [tokenizer.bos_id] + tokenizer.encode(fits)
    assert skipped.encoded is None and (skipped.shots, skipped.dropped) == (0, 0)
    summary = summarize([SubjectResult(subject, [short, skipped], [[0.0, -1, -2, -3], None])], {})
    assert summary["accuracy"] == {"by_question": 0.0, "by_subject": 0.0, "questions": 2,
                                   "scored": 1, "correct": 0, "skipped": 1, "shots_dropped": 1,
                                   "subjects": 1}


# --- scoring -----------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["ceval", "cmmlu", "mmlu"])
def test_cached_prefix_equals_full_forward(task, tmp_path, model, tokenizer):
    data_dir = make_benchmark(tmp_path, task)
    split = "val" if task != "cmmlu" else "test"
    runs = [evaluate_benchmark(model, tokenizer, task, data_dir, split, batch_size=4,
                               use_cache=use_cache)[0] for use_cache in (True, False)]
    cached, full = ([q for subject in run["questions"].values() for q in subject] for run in runs)
    assert len(cached) == 12 and all(q["shots"] == 5 for q in cached)
    assert [q["prediction"] for q in cached] == [q["prediction"] for q in full]
    assert len({q["prediction"] for q in cached}) > 1  # the model does not always say one letter
    for a, b in zip(cached, full):
        assert a["log_probs"] == pytest.approx(b["log_probs"], abs=1e-4)
    assert runs[0]["accuracy"] == runs[1]["accuracy"]


def test_multi_token_continuations_cached_equals_full(model, tokenizer):
    prefix = "Capitals of countries.\n\nFrance: Paris\n\n"
    answers = [" Berlin", " Ouagadougou", " Rome", " Ulaanbaatar"]
    prefix_ids = tokenizer.bos_ids + tokenizer.encode(prefix)
    questions = [encode_question(tokenizer, prefix_ids, prefix + f"{country}:", answers)
                 for country in ("Germany", "Burkina Faso", "Italy", "Mongolia", "Chile")]
    assert any(len(w) - len(q.prompt_ids) > 1 for q in questions for w in q.wholes)
    assert len(questions[0].cached_rows()) == 4  # a row per choice
    done = []
    cached = ChoiceScorer(model, batch_size=3).score(questions, on_done=done.append)
    assert sum(done) == len(questions)
    full = ChoiceScorer(model, batch_size=2, use_cache=False).score(questions)
    for a, b in zip(cached, full):
        assert a == pytest.approx(b, abs=1e-4)


def test_ties_go_to_the_earlier_letter():
    assert predict([-1.0, -0.5, -0.5, -2.0]) == "B"
    assert predict([-3.0, -3.0, -3.0, -3.0]) == "A"


transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_export(tmp_path_factory, weights, llama_spm):
    from scripts.convert_tencentpretrain_to_llama_huggingface import main
    out = str(tmp_path_factory.mktemp("hf") / "export")
    main(["--input_model_path", weights, "--config_path", TINY, "--output_model_path", out,
          "--spm_model_path", llama_spm])
    return (transformers.AutoTokenizer.from_pretrained(out),
            transformers.AutoModelForCausalLM.from_pretrained(out).eval())


def hf_log_prob(hf_export, prompt, continuation):
    """lm-evaluation-harness's way, with transformers alone: the continuation is what encoding
    prompt + continuation adds to the prompt's encoding."""
    hf_tokenizer, hf_model = hf_export
    context = hf_tokenizer(prompt)["input_ids"]
    whole = hf_tokenizer(prompt + continuation)["input_ids"]
    assert whole[:len(context)] == context
    with torch.no_grad():
        log_probs = hf_model(torch.tensor([whole])).logits[0].float().log_softmax(-1)
    return sum(float(log_probs[len(context) - 1 + t, token])
               for t, token in enumerate(whole[len(context):]))


@pytest.mark.parametrize("task", ["ceval", "mmlu"])  # "A" and " A"
def test_scores_equal_transformers_on_the_hf_export(task, tmp_path, model, tokenizer, hf_export):
    key = SUBJECTS[task][0]
    data_dir = make_benchmark(tmp_path, task, subjects=(key,), questions=3)
    summary, _ = evaluate_benchmark(model, tokenizer, task, data_dir, "val", batch_size=2)
    layout, subject = LAYOUTS[task], LAYOUTS[task].subject(key, {})
    shots = read_questions(layout, layout.path(data_dir, "dev", key))
    prefix = header(task, subject) + "".join(question_text(task, s, True) for s in shots)
    for question, record in zip(read_questions(layout, layout.path(data_dir, "val", key)),
                                summary["questions"][key]):
        prompt = prefix + question_text(task, question)
        expected = [hf_log_prob(hf_export, prompt, c) for c in continuations(task)]
        assert record["log_probs"] == pytest.approx(expected, rel=1e-5, abs=1e-4)


def test_multi_token_scores_equal_transformers(model, tokenizer, hf_export):
    prefix = "以下是地理题。\n\n法国的首都：巴黎\n\n"
    prompt, answers = prefix + "蒙古的首都：", ["乌兰巴托", "北京", " Ulaanbaatar", "Rome"]
    encoded = encode_question(tokenizer, tokenizer.bos_ids + tokenizer.encode(prefix), prompt,
                              answers)
    assert encoded.cached_rows() is not None
    [scores] = ChoiceScorer(model).score([encoded])
    assert scores == pytest.approx([hf_log_prob(hf_export, prompt, a) for a in answers],
                                   rel=1e-5, abs=1e-4)


# --- report ------------------------------------------------------------------------------

def test_both_averages_on_two_subjects():
    def result(key, category, answers, predictions):
        prompts = [Prompt(Question(str(i), "q", ("a", "b", "c", "d"), a), encoded=object(),
                          shots=5) for i, a in enumerate(answers)]
        scores = [None if p is None else [0.0 if letter == p else -1.0 for letter in "ABCD"]
                  for p in predictions]
        return SubjectResult(Subject(key, key, (category,)), prompts, scores)

    results = [result("small", "STEM", "AB", "AB"),  # 2 of 2
               result("large", "Humanities", "ABCDA", ["A", "C", "B", "A", None])]  # 1 of 4
    summary = summarize(results, {"task": "mmlu"})
    assert summary["accuracy"]["by_question"] == pytest.approx(3 / 6)
    assert summary["accuracy"]["by_subject"] == pytest.approx((1 + 1 / 4) / 2)
    assert summary["accuracy"]["skipped"] == 1
    assert summary["categories"]["STEM"]["by_subject"] == 1.0
    assert summary["categories"]["Humanities"]["by_question"] == pytest.approx(0.25)
    assert summary["subjects"]["large"]["accuracy"] == pytest.approx(0.25)


# --- command line ------------------------------------------------------------------------

def run_cli(args, capsys):
    from inference.evaluate_benchmark import main
    return run_main(main, args, capsys)


def test_cli_result_file_table_and_submission(tmp_path, weights, llama_spm, capsys):
    data_dir = make_benchmark(tmp_path / "ceval", "ceval", questions=2, split="test",
                              answers=False)
    make_benchmark(tmp_path / "ceval", "ceval", questions=3)
    model_args = ["--load_model_path", weights, "--config_path", TINY, "--spm_model_path",
                  llama_spm, "--task", "ceval", "--data_dir", data_dir]
    status, out, err = run_cli(model_args + ["--result_path", tmp_path / "r" / "val.json",
                                             "--subjects", "law"], capsys)
    assert status == 0, err
    result = json.loads((tmp_path / "r" / "val.json").read_text(encoding="utf-8"))
    assert list(result["subjects"]) == ["law"] and result["settings"]["split"] == "val"
    assert len(result["questions"]["law"]) == 3
    assert "ALL" in out and "by question %" in out and "by subject %" in out
    status, out, err = run_cli(model_args + ["--split", "test", "--result_path",
                                             tmp_path / "r" / "test.json"], capsys)
    assert status == 0, err
    submission = json.loads((tmp_path / "r" / "test.submission.json").read_text())
    assert submission == {"high_school_physics": {"0": submission["high_school_physics"]["0"],
                                                  "1": submission["high_school_physics"]["1"]},
                          "law": {"0": submission["law"]["0"], "1": submission["law"]["1"]}}
    assert set(submission["law"].values()) <= set("ABCD")


@pytest.mark.parametrize("extra,message", [
    (["--split", "val", "--task", "cmmlu"], "error: --split val: cmmlu has dev, test"),
    (["--subjects", "nope"], "error: --subjects: no {data}/val/nope_val.csv"),
    (["--split", "dev"], "error: --split dev is where the shots come from; evaluate another "
                         "split or use --n_shot 0"),
    (["--prompt_template", "alpaca", "--n_shot", "3"],
     "error: --prompt_template wraps a 0-shot question; use --n_shot 0"),
    (["--max_seq_length", "4096"], "error: --max_seq_length 4096: must be in [2, 1024] (the "
                                   "config's max_seq_length)"),
])
def test_cli_errors_are_one_line(tmp_path, weights, llama_spm, capsys, extra, message):
    data_dir = make_benchmark(tmp_path / "ceval", "ceval", questions=2)
    status, _, err = run_cli(["--load_model_path", weights, "--config_path", TINY,
                              "--spm_model_path", llama_spm, "--task", "ceval", "--data_dir",
                              data_dir, "--result_path", tmp_path / "r.json", *extra], capsys)
    assert status == 2
    assert err.strip().splitlines() == [message.format(data=data_dir)]
