"""Multiple-choice benchmark accuracy (C-Eval, CMMLU, MMLU): read, prompt, score, report."""
import sys

from tqdm import tqdm

from tencentpretrain.benchmarks.formats import (LAYOUTS, SHOT_SPLIT, BenchmarkError,
                                                read_questions, subject_table)
from tencentpretrain.benchmarks.prompts import build_prompts
from tencentpretrain.benchmarks.report import SubjectResult, summarize
from tencentpretrain.benchmarks.scoring import ChoiceScorer


def check_options(task, split, n_shot, template, max_seq_length, model_max):
    """The split (default: the task's), n_shot (default 5, 0 under a template) and length."""
    if task not in LAYOUTS:
        raise BenchmarkError(f"--task {task}: one of {', '.join(LAYOUTS)}")
    layout = LAYOUTS[task]
    split = split or layout.default_split
    if split not in layout.splits:
        raise BenchmarkError(f"--split {split}: {task} has {', '.join(layout.splits)}")
    if n_shot is None:
        n_shot = 0 if template is not None else 5
    if n_shot < 0:
        raise BenchmarkError(f"--n_shot must be >= 0, got {n_shot}")
    if n_shot and split == SHOT_SPLIT:
        raise BenchmarkError(f"--split {SHOT_SPLIT} is where the shots come from; evaluate "
                             f"another split or use --n_shot 0")
    max_seq_length = max_seq_length or model_max
    if not 2 <= max_seq_length <= model_max:
        raise BenchmarkError(f"--max_seq_length {max_seq_length}: must be in [2, {model_max}] "
                             f"(the config's max_seq_length)")
    return layout, split, n_shot, max_seq_length


def select_subjects(layout, data_dir, split, subjects=None):
    keys = layout.subject_keys(data_dir, split)
    if not subjects:
        return keys
    missing = [s for s in subjects if s not in keys]
    if missing:
        raise BenchmarkError(f"--subjects: no {layout.path(data_dir, split, missing[0])}")
    return list(subjects)


def evaluate_benchmark(model, tokenizer, task, data_dir, split=None, n_shot=None, subjects=None,
                       batch_size=8, max_seq_length=None, template=None, progress=False,
                       use_cache=True):
    """The result document of report.summarize. ``template``: a prompts.PromptTemplate
    (0-shot); ``use_cache=False``: one full forward per question (same predictions)."""
    layout, split, n_shot, max_len = check_options(task, split, n_shot, template,
                                                   max_seq_length, model.config.max_seq_length)
    keys = select_subjects(layout, data_dir, split, subjects)
    mapping = subject_table(data_dir)
    subjects_info = [layout.subject(key, mapping) for key in keys]  # unknown names: fail now
    scorer = ChoiceScorer(model, batch_size, use_cache)
    results, answered = [], None
    for subject in subjects_info:
        questions = read_questions(layout, layout.path(data_dir, split, subject.key))
        for q in questions:  # a split has answers everywhere or nowhere (test)
            answered = q.answer is not None if answered is None else answered
            if (q.answer is not None) != answered:
                raise BenchmarkError(f"{q.where}: {'no' if answered else 'an'} answer, unlike "
                                     f"the questions before it")
        shots = []
        if n_shot:
            shots = read_questions(layout, layout.path(data_dir, SHOT_SPLIT, subject.key))[:n_shot]
            for shot in shots:
                if shot.answer is None:
                    raise BenchmarkError(f"{shot.where}: a shot without an answer")
        prompts = build_prompts(task, subject, questions, shots, tokenizer, max_len, template)
        kept = [p for p in prompts if p.encoded is not None]
        with tqdm(total=len(kept), desc=subject.key, unit="q", file=sys.stderr,
                  disable=None if progress else True, dynamic_ncols=True) as bar:
            scores = iter(scorer.score([p.encoded for p in kept], on_done=bar.update))
        results.append(SubjectResult(subject, prompts,
                                     [next(scores) if p.encoded is not None else None
                                      for p in prompts]))
    settings = {"task": task, "split": split, "n_shot": n_shot, "max_seq_length": max_len,
                "prompt_template": template is not None, "answers": bool(answered)}
    return summarize(results, settings), results
