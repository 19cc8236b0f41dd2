"""The benchmarks' own prompts, character for character (docs/evaluation.md shows them).

A prompt is a shared prefix (the subject's header and its k shots, the same for every
question of a subject) followed by the question, which ends where the answer goes
(``答案：``, ``答案是：``, ``Answer:``). The answer continuation of choice X is the letter as
the shots write it: ``X`` for C-Eval and CMMLU, `` X`` (with the space) for MMLU.
"""
from dataclasses import dataclass

from tencentpretrain.benchmarks.formats import LETTERS, BenchmarkError
from tencentpretrain.benchmarks.scoring import encode_question, encode_questions
from tencentpretrain.prompts import ALPACA_TEMPLATE, build_prompt, load_template


@dataclass(frozen=True)
class Style:
    header: str  # "{name}": the subject's name
    question_start: str
    answer_cue: str  # ends every question; the answer follows it
    answer: str  # the continuation of a letter ("{}")


STYLES = {
    "ceval": Style("以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n\n", "",
                   "\n答案：", "{}"),
    "cmmlu": Style("以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n", "题目：",
                   "\n答案是：", "{}"),
    "mmlu": Style("The following are multiple choice questions (with answers) about "
                  "{name}.\n\n", "", "\nAnswer:", " {}"),
}


def header(task, subject):
    return STYLES[task].header.replace("{name}", subject.name)


def question_text(task, question, with_answer=False):
    """The question and its options, ending with the answer cue (and, for a shot, the
    answer and a blank line)."""
    style = STYLES[task]
    options = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, question.choices))
    text = f"{style.question_start}{question.question}{options}{style.answer_cue}"
    if with_answer:
        text += style.answer.format(question.answer) + "\n\n"
    return text


def continuations(task, templated=False):
    """The four answer continuations. Under an instruction template the response starts
    the answer, so the bare letter."""
    return [letter if templated else STYLES[task].answer.format(letter) for letter in LETTERS]


def resolve_template(value):
    """--prompt_template: "alpaca" or a template file, as generate_lm.py takes it."""
    if value is None:
        return None
    return ALPACA_TEMPLATE if value == "alpaca" else load_template(value)


@dataclass
class Prompt:
    """One question ready to score: ``encoded`` (scoring.EncodedQuestion) or skipped."""
    question: object
    encoded: object = None  # None: skipped, even 0 shots do not fit
    shots: int = 0  # shots kept
    dropped: int = 0  # shots dropped to fit --max_seq_length


def build_prompts(task, subject, questions, shots, tokenizer, max_seq_length, template=None):
    """A Prompt per question. Too long for ``max_seq_length`` (prompt and answer): the
    longest shot (the later of equal ones) is dropped until it fits; a question that does
    not fit alone is skipped, never cut. ``template`` (0-shot only) wraps header + question."""
    if template is not None and shots:
        raise BenchmarkError("--prompt_template wraps a 0-shot question; use --n_shot 0")
    head = header(task, subject)
    shot_texts = [question_text(task, shot, with_answer=True) for shot in shots]
    answers = continuations(task, templated=template is not None)
    prefix_ids = {}

    def item(question, kept):
        """(prefix ids, whole prompt text) with the shots ``kept``."""
        query = question_text(task, question)
        if template is not None:
            prefix, query = "", build_prompt(head + query, template=template)
        else:
            prefix = head + "".join(shot_texts[i] for i in kept)
        if prefix not in prefix_ids:
            prefix_ids[prefix] = tokenizer.bos_ids + tokenizer.encode(prefix)
        return prefix_ids[prefix], prefix + query

    every_shot = list(range(len(shots)))
    encoded = encode_questions(tokenizer, [item(q, every_shot) for q in questions], answers)
    prompts = []
    for question, first in zip(questions, encoded):
        if first.length <= max_seq_length:  # the usual case: all shots fit
            prompts.append(Prompt(question, first, len(shots), 0))
            continue
        shot_lengths = [len(tokenizer.encode(text)) for text in shot_texts]
        kept, fitted = list(every_shot), None
        while kept and fitted is None:
            kept.remove(max(reversed(kept), key=lambda i: shot_lengths[i]))
            candidate = encode_question(tokenizer, *item(question, kept), answers)
            fitted = candidate if candidate.length <= max_seq_length else None
        prompts.append(Prompt(question) if fitted is None else  # skipped: nothing dropped
                       Prompt(question, fitted, len(kept), len(shots) - len(kept)))
    return prompts
