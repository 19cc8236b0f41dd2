"""C-Eval, CMMLU and MMLU read as they are distributed: a folder per split, a CSV per subject.

* ``ceval``: ``{dev,val,test}/{subject}_{split}.csv``, header ``id,question,A,B,C,D,answer``
  (dev adds ``explanation``; test has no answers).
* ``cmmlu``: ``{dev,test}/{subject}.csv``, header ``,Question,A,B,C,D,Answer`` (the first
  column an unnamed index).
* ``mmlu``: ``{dev,val,test}/{subject}_{split}.csv``, no header: question, A, B, C, D, answer.

CSV as Python's ``csv`` module reads it (quoted fields may hold commas and newlines), UTF-8
with or without a BOM. Shots always come from ``dev``.
"""
import csv
import os
from dataclasses import dataclass

from tencentpretrain.benchmarks import subjects as tables
from tencentpretrain.errors import UserError
from tencentpretrain.utils.files import read_json

LETTERS = ("A", "B", "C", "D")
SHOT_SPLIT = "dev"
MAPPING_FILE = "subject_mapping.json"  # C-Eval's: {"subject": [English, Chinese, category]}


class BenchmarkError(UserError):
    """Benchmark data or options that cannot be evaluated; one line naming the file."""


@dataclass(frozen=True)
class Question:
    id: str  # the file's id (C-Eval, CMMLU) or the 0-based row number (MMLU)
    question: str
    choices: tuple  # the four option texts, A to D
    answer: str = None  # "A".."D", or None where the split has no answers
    where: str = ""  # "path:line" for messages


@dataclass(frozen=True)
class Subject:
    key: str  # the file name's subject part: "computer_network"
    name: str  # as the prompt names it: "计算机网络", "computer network"
    categories: tuple  # ("STEM",); a CMMLU subject may add "China specific"


@dataclass(frozen=True)
class Layout:
    """Where a task's files are and which columns hold what."""
    name: str
    splits: tuple
    default_split: str
    file_suffix: str  # "_{split}.csv" or ".csv"
    header: tuple  # (id, question, answer) column names, or None: no header row
    table: dict  # subjects.py's table

    def path(self, data_dir, split, subject):
        return os.path.join(data_dir, split, subject + self.file_suffix.format(split=split))

    def subject_keys(self, data_dir, split):
        folder = os.path.join(data_dir, split)
        if not os.path.isdir(folder):
            raise BenchmarkError(f"--data_dir {data_dir}: no {split}/ folder ({self.name} has "
                                 f"{', '.join(s + '/' for s in self.splits)})")
        suffix = self.file_suffix.format(split=split)
        keys = sorted(name[:-len(suffix)] for name in os.listdir(folder)
                      if name.endswith(suffix) and len(name) > len(suffix))
        if not keys:
            raise BenchmarkError(f"--data_dir {data_dir}: no *{suffix} files in {split}/")
        return keys

    def subject(self, key, mapping):
        """The subject's prompt name and categories: the data folder's mapping file first."""
        if key in mapping:
            entry = mapping[key]
            name = key.replace("_", " ") if self.name == "mmlu" else entry[1]
            return Subject(key, name, tuple(entry[2:3]) or ("Other",))
        if key not in self.table:
            if self.name == "mmlu":  # the prompt needs no table: the name is the file's
                return Subject(key, key.replace("_", " "), ("Other",))
            raise BenchmarkError(f"{self.name} subject {key!r} is not in the built-in table; "
                                 f"name it in {MAPPING_FILE} in --data_dir "
                                 f'({{"{key}": ["English", "中文名", "Category"]}})')
        entry = self.table[key]
        if self.name == "mmlu":
            return Subject(key, key.replace("_", " "), (entry,))
        return Subject(key, entry[0], tuple(entry[1:]))


LAYOUTS = {
    "ceval": Layout("ceval", ("dev", "val", "test"), "val", "_{split}.csv",
                    ("id", "question", "answer"), tables.CEVAL),
    "cmmlu": Layout("cmmlu", ("dev", "test"), "test", ".csv", ("", "Question", "Answer"),
                    tables.CMMLU),
    "mmlu": Layout("mmlu", ("dev", "val", "test"), "test", "_{split}.csv", None, tables.MMLU),
}


def subject_table(data_dir):
    """``subject_mapping.json`` of the data folder ({} without one), checked."""
    path = os.path.join(data_dir, MAPPING_FILE)
    if not os.path.isfile(path):
        return {}
    mapping = read_json(path, BenchmarkError, expect=dict)
    for key, entry in mapping.items():
        if (not isinstance(entry, list) or not 2 <= len(entry) <= 3
                or not all(isinstance(v, str) for v in entry)):
            raise BenchmarkError(f'{path}: "{key}" must be [English name, Chinese name, '
                                 f"category] (category optional), got {entry!r}")
    return mapping


def _records(path):
    """(line number where the record starts, fields) of every non-empty CSV record."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            start = 1
            for fields in reader:
                if any(field.strip() for field in fields):
                    yield start, fields
                start = reader.line_num + 1
    except FileNotFoundError:
        raise BenchmarkError(f"{path}: no such file") from None
    except UnicodeDecodeError as e:
        raise BenchmarkError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise BenchmarkError(f"{path}:{reader.line_num}: not CSV ({e})") from None


def _columns(layout, path, header):
    """Column index of id, question, A-D and answer (None where absent) from the header."""
    id_name, question_name, answer_name = layout.header
    names = [h.strip() for h in header]
    index = {}
    for name in (question_name, *LETTERS):
        if name not in names:
            raise BenchmarkError(f"{path}:1: no {name!r} column in the header {header!r} "
                                 f"(a {layout.name} file starts with "
                                 f"{','.join([id_name, question_name, *LETTERS, answer_name])})")
        index[name] = names.index(name)
    id_col = names.index(id_name) if id_name in names else None
    answer_col = names.index(answer_name) if answer_name in names else None
    return id_col, index[question_name], [index[x] for x in LETTERS], answer_col


def read_questions(layout, path):
    """The questions of one subject file, in file order."""
    records = _records(path)
    if layout.header is None:  # MMLU: question, A, B, C, D[, answer]
        id_col, question_col, choice_cols, answer_col = None, 0, [1, 2, 3, 4], 5
    else:
        first = next(records, None)
        if first is None:
            raise BenchmarkError(f"{path}: empty, not even a header")
        id_col, question_col, choice_cols, answer_col = _columns(layout, path, first[1])
    questions = []
    for number, (line, fields) in enumerate(records):
        where = f"{path}:{line}"
        needed = max(c for c in [id_col, question_col, *choice_cols] if c is not None) + 1
        if len(fields) < needed:
            raise BenchmarkError(f"{where}: {len(fields)} fields, a {layout.name} record has "
                                 f"at least {needed}")
        answer = fields[answer_col].strip() if answer_col is not None and answer_col < len(
            fields) else ""
        if answer and answer not in LETTERS:
            raise BenchmarkError(f"{where}: answer {answer!r} is not one of A, B, C, D")
        questions.append(Question(
            id=fields[id_col].strip() if id_col is not None else str(number),
            question=fields[question_col], choices=tuple(fields[c] for c in choice_cols),
            answer=answer or None, where=where))
    return questions
