"""Shared by the vocabulary tests (no tests here): a small Chinese domain model merged into
LLaMA's, made once per session, and held-out Chinese text it never saw."""
import functools
import json
import os
import tempfile

from tests.conftest import SHARED_DATA, need_shared_data
from tests.training_support import LLAMA_SPM

CLUE = os.path.join(SHARED_DATA, "CLUECorpusSmall_sampled.txt")
TRAIN_LINES, HELD_OUT_LINES = 400, 40  # the domain model trains on the head, tests on the tail


def clue_lines():
    need_shared_data()  # LLaMA's tokenizer and the Chinese corpus: ../shared only
    with open(CLUE, encoding="utf-8") as f:
        return f.read().splitlines()


def held_out_chinese():
    return clue_lines()[-HELD_OUT_LINES:]


def english_texts(n=None):
    need_shared_data()
    with open(os.path.join(SHARED_DATA, "c4_demo.jsonl"), encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][:n]


@functools.lru_cache(maxsize=None)
def merged_tokenizer():
    """(domain model, merged model) paths: a 4000-piece BPE model on 400 CLUE lines, appended
    to LLaMA's tokenizer."""
    from tencentpretrain.vocab.merge import merge_tokenizers
    from tencentpretrain.vocab.train import train_tokenizer
    root = tempfile.mkdtemp(prefix="tp_vocab_")
    corpus = os.path.join(root, "zh_train.txt")
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(clue_lines()[:TRAIN_LINES]) + "\n")
    domain = train_tokenizer(corpus, 4000, os.path.join(root, "zh.model"),
                             log=lambda *a, **k: None)
    merged = os.path.join(root, "merged.model")
    merge_tokenizers(LLAMA_SPM, domain, merged)
    return domain, merged
