"""Predictions, accuracies per subject and category, the console table and the result files.

Two averages, always labelled: ``by_question`` (correct / scored over all questions of the
group, the way lm-evaluation-harness reports MMLU) and ``by_subject`` (the mean of the
subjects' accuracies, the way C-Eval's and CMMLU's leaderboards do). Skipped questions
(longer than --max_seq_length with no shot at all) count in neither, and are counted.
"""
import json
from dataclasses import dataclass

from tencentpretrain.benchmarks.formats import LETTERS
from tencentpretrain.utils.files import write_text_atomic


def predict(log_probs):
    """The letter with the highest score; ties go to the earlier letter."""
    best = max(range(len(log_probs)), key=lambda i: (log_probs[i], -i))
    return LETTERS[best]


@dataclass
class SubjectResult:
    subject: object  # formats.Subject
    prompts: list  # prompts.Prompt per question
    scores: list  # per prompt: the four log-probabilities, or None (skipped)

    def records(self):
        for prompt, scores in zip(self.prompts, self.scores):
            q = prompt.question
            yield {"id": q.id, "answer": q.answer,
                   "prediction": None if scores is None else predict(scores),
                   "log_probs": scores, "shots": prompt.shots, "skipped": scores is None}

    def counts(self):
        records = list(self.records())
        scored = [r for r in records if not r["skipped"] and r["answer"] is not None]
        return {"questions": len(records), "scored": len(scored),
                "correct": sum(r["prediction"] == r["answer"] for r in scored),
                "skipped": sum(r["skipped"] for r in records),
                "shots_dropped": sum(p.dropped for p in self.prompts)}


def _averages(subject_counts):
    """by_question and by_subject accuracy (None where nothing was scored)."""
    scored = [c for c in subject_counts if c["scored"]]
    total = sum(c["scored"] for c in scored)
    return {"by_question": sum(c["correct"] for c in scored) / total if total else None,
            "by_subject": (sum(c["correct"] / c["scored"] for c in scored) / len(scored)
                           if scored else None)}


def summarize(results, settings):
    """The result document: settings, overall and per-category averages, per-subject counts
    and every question's prediction and log-probabilities."""
    counts = {r.subject.key: r.counts() for r in results}
    categories = {}
    for r in results:
        for category in r.subject.categories:
            categories.setdefault(category, []).append(r.subject.key)
    total = {k: sum(c[k] for c in counts.values())
             for k in ("questions", "scored", "correct", "skipped", "shots_dropped")}
    return {
        "settings": settings,
        "accuracy": {**_averages(list(counts.values())), **total, "subjects": len(results)},
        "categories": {name: {**_averages([counts[k] for k in keys]), "subjects": len(keys),
                              "questions": sum(counts[k]["questions"] for k in keys)}
                       for name, keys in sorted(categories.items())},
        "subjects": {r.subject.key: {"name": r.subject.name,
                                     "categories": list(r.subject.categories),
                                     "accuracy": (counts[r.subject.key]["correct"]
                                                  / counts[r.subject.key]["scored"]
                                                  if counts[r.subject.key]["scored"] else None),
                                     **counts[r.subject.key]} for r in results},
        "questions": {r.subject.key: list(r.records()) for r in results},
    }


def submission(results):
    """C-Eval's submission layout: {subject: {id: "A"}} (skipped questions left out)."""
    return {r.subject.key: {rec["id"]: rec["prediction"] for rec in r.records()
                            if not rec["skipped"]} for r in results}


def _pct(value):
    return "     -" if value is None else f"{100 * value:6.2f}"


def format_table(summary):
    """The console table: subjects, categories, then both overall averages."""
    lines = [f"{'subject':<42} {'category':<16} {'n':>5} {'acc %':>6} {'skip':>5} "
             f"{'drop':>5}"]
    for key, s in summary["subjects"].items():
        lines.append(f"{key[:42]:<42} {'/'.join(s['categories'])[:16]:<16} {s['questions']:>5} "
                     f"{_pct(s['accuracy'])} {s['skipped']:>5} {s['shots_dropped']:>5}")
    lines.append("")
    lines.append(f"{'category':<42} {'subjects':>8} {'by question %':>14} {'by subject %':>13}")
    rows = list(summary["categories"].items()) + [("ALL", summary["accuracy"])]
    for name, c in rows:
        lines.append(f"{name[:42]:<42} {c['subjects']:>8} {_pct(c['by_question']):>14} "
                     f"{_pct(c['by_subject']):>13}")
    a = summary["accuracy"]
    lines.append(f"{a['questions']} questions, {a['scored']} scored, {a['skipped']} skipped "
                 f"(too long even with 0 shots), {a['shots_dropped']} shots dropped to fit")
    return "\n".join(lines)


def write_json(path, value):
    write_text_atomic(path, json.dumps(value, ensure_ascii=False, indent=1) + "\n")
