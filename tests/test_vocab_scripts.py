"""Vocabulary scripts: train_tokenizer.py refuses a corpus that is not UTF-8, naming the line;
merge_tokenizers.py --scripts keeps only pieces written in the named Unicode scripts, and
notes a base whose normalizer is not identity."""
import os
import subprocess
import sys
import unicodedata

import pytest

from tencentpretrain.tokenizer import TokenizerError
from tencentpretrain.vocab.merge import is_appendable, merge_tokenizers
from tencentpretrain.vocab.scripts import ScriptFilter, parse_scripts
from tencentpretrain.vocab.spm_model import NORMAL, load_proto
from tencentpretrain.vocab.train import train_tokenizer
from tests.conftest import ROOT

TRAIN = os.path.join(ROOT, "scripts", "train_tokenizer.py")
MERGE = os.path.join(ROOT, "scripts", "merge_tokenizers.py")
JAPANESE = ["東京の大学で日本語を勉強しています。", "ラーメンとカレーライスが大好きです。"]
CHINESE = ["我们在北京学习中文，天气很好。"]
OTHERS = ["Привет, как дела? Москва большая.", "I like 😀 and 🎉 emoji 😀😀",
          "Café résumé naïve déjà vu"]
# The characters --scripts Han,Hiragana,Katakana admits from these lines: all of the Japanese
# and Chinese ones (ー and 。 included, by Script_Extensions) except the full-width comma,
# which is Common. Written out here, not computed with regex, so the test checks the rule.
CJK_KEPT = set("".join(JAPANESE + CHINESE)) - {"，"}


def quiet(*args, **kwargs):
    pass


def cli(script, *args):
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory):
    """A 400-piece BPE model trained on Chinese, Japanese, Cyrillic, emoji and Latin lines."""
    root = tmp_path_factory.mktemp("mixed")
    corpus = root / "mixed.txt"
    corpus.write_text("".join(line + "\n" for _ in range(60)
                              for line in JAPANESE + CHINESE + OTHERS), encoding="utf-8")
    return train_tokenizer(str(corpus), 400, str(root / "mixed.model"), log=quiet)


# --- train_tokenizer.py: invalid UTF-8 ---------------------------------------------------------

def test_train_tokenizer_refuses_invalid_utf8_naming_the_line(tmp_path):
    corpus = tmp_path / "bad.txt"
    corpus.write_bytes(("東京の大学で日本語を勉強しています。\n" * 50).encode() + b"fine\nab\xffcd\n"
                       + b"more text\n" * 50)
    out = tmp_path / "out" / "t.model"
    result = cli(TRAIN, "--corpus_path", corpus, "--vocab_size", 300,
                 "--output_spm_model_path", out)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"error: --corpus_path {corpus}:52: invalid UTF-8 (byte 0xff at "
                             "column 3)\n")
    assert result.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["bad.txt"]  # nothing written, no folder made


def test_train_tokenizer_utf8_check_crosses_blocks(tmp_path, monkeypatch):
    """A character cut by a block boundary is fine; the bad line is found past the first block."""
    from tencentpretrain.data import corpus as corpus_module
    monkeypatch.setattr(corpus_module, "BLOCK_BYTES", 7)
    good = tmp_path / "good.txt"
    good.write_text("日本語の文\n" * 20, encoding="utf-8")
    corpus_module.check_utf8(str(good))
    bad = tmp_path / "bad.txt"
    bad.write_bytes("日本語の文\n".encode() * 20 + "日本".encode() + b"\xe8\n")
    with pytest.raises(corpus_module.CorpusError,
                       match=r"^--corpus_path .*bad\.txt:21: invalid UTF-8 \(byte 0xe8 at column 7\)$"):
        train_tokenizer(str(bad), 300, str(tmp_path / "t.model"), log=quiet)
    assert not (tmp_path / "t.model").exists()


# --- merge_tokenizers.py --scripts ---------------------------------------------------------------

def test_scripts_keep_exactly_the_cjk_pieces(tmp_path, llama_spm, mixed_model):
    out = tmp_path / "merged.model"
    result = cli(MERGE, "--base_spm_model_path", llama_spm, "--new_spm_model_path", mixed_model,
                 "--output_spm_model_path", out, "--scripts", "Han,Hiragana,Katakana")
    assert result.returncode == 0, result.stderr
    base, new, merged = (load_proto(p, "x") for p in (llama_spm, mixed_model, str(out)))
    base_pieces = {p.piece for p in base.pieces}
    candidates = [p.piece for p in new.pieces if is_appendable(p, base_pieces)]
    appended = [p.piece for p in merged.pieces[len(base.pieces):]]
    expected = [p for p in candidates if all(ch in CJK_KEPT or ch == "\u2581" for ch in p)]
    assert appended == expected
    dropped = [p for p in candidates if p not in expected]
    # what the domain corpus pulled in besides CJK, none of which is appended
    for piece in ("▁😀", "▁🎉", "😀", "При", "Мо"):
        assert piece in dropped, piece
    # the prolonged sound mark and the ideographic full stop count as Japanese / Chinese
    assert "レー" in appended
    assert any(ch in "のがでをとしてすまいき" for p in appended for ch in p)  # Hiragana
    assert any(ch in "ラメンカレイス" for p in appended for ch in p)  # Katakana
    assert any(ch in "我们在北京学习中文天气很好" for p in appended for ch in p)  # Han
    # the summary counts pieces per script (together: all appended) and the dropped ones
    lines = result.stdout.splitlines()
    assert lines[0] == (f"wrote {out}: 32000 base pieces + {len(expected)} appended = "
                        f"{32000 + len(expected)}")
    assert lines[1].startswith("--scripts Han,Hiragana,Katakana: appended ")
    counts = lines[1].split(": appended ")[1].split("; dropped ")
    assert sum(int(part.rsplit(" ", 1)[1]) for part in counts[0].split(", ")) == len(expected)
    assert counts[1].startswith(f"{len(dropped)} (") and "Cyrillic" in counts[1] \
        and "Common" in counts[1]
    assert len(lines) == 2  # LLaMA's base normalizes by identity: no note


def handmade_model(path, like, pieces):
    """A BPE model holding ``pieces`` after the special and byte pieces of ``like``."""
    proto = load_proto(like, "x")
    keep = [p for p in proto.pieces if p.type != NORMAL]
    del proto.pieces[:]
    for p in keep:
        proto.pieces.add().CopyFrom(p)
    for i, text in enumerate(pieces):
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = text, -float(i), NORMAL
    proto.trainer_spec.vocab_size = len(proto.pieces)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return str(path)


def test_scripts_exact_pieces_and_summary(tmp_path, llama_spm, mixed_model):
    pieces = ["▁東京都庁", "ラーメン屋", "ーー", "食べ物屋", "、「", "々木", "ひらがなだけ",
              "カタカナだけ", "▁привет", "😀😀", "１２３", "ＡＢ", "éé", "東京😀", "ﾗｰﾒﾝ", "абв"]
    new = handmade_model(tmp_path / "new.model", mixed_model, pieces)
    out = tmp_path / "merged.model"
    result = cli(MERGE, "--base_spm_model_path", llama_spm, "--new_spm_model_path", new,
                 "--output_spm_model_path", out, "--scripts", "Han,Hiragana,Katakana")
    assert result.returncode == 0, result.stderr
    appended = [p.piece for p in load_proto(str(out), "x").pieces[32000:]]
    assert appended == ["▁東京都庁", "ラーメン屋", "ーー", "食べ物屋", "、「", "々木", "ひらがなだけ",
                        "カタカナだけ", "ﾗｰﾒﾝ"]
    assert result.stdout.splitlines()[1] == (
        "--scripts Han,Hiragana,Katakana: appended Han 3, Hiragana 2, Han+Hiragana 1, "
        "Han+Katakana 1, Hiragana+Katakana 1, Katakana 1; dropped 7 "
        "(Common 3, Cyrillic 2, Latin 2)")  # full-width ＡＢ is Latin, １２３ Common
    # naming Common admits digits, full-width forms and emoji
    result = cli(MERGE, "--base_spm_model_path", llama_spm, "--new_spm_model_path", new,
                 "--output_spm_model_path", out, "--scripts", "Han,Hiragana,Katakana,Common")
    assert result.returncode == 0, result.stderr
    appended = {p.piece for p in load_proto(str(out), "x").pieces[32000:]}
    assert {"😀😀", "１２３", "東京😀"} <= appended and "▁привет" not in appended


@pytest.mark.parametrize("text, message", [
    ("Han,Hirgana", "--scripts: 'Hirgana' is not a Unicode script; did you mean Hiragana"),
    ("Kanji", "--scripts: 'Kanji' is not a Unicode script"),
    ("Han}", "--scripts: 'Han}' is not a Unicode script"),
    (",", "--scripts ',': no script named"),
    ("Han,hani", "--scripts 'Han,hani': a script is named twice"),
])
def test_unknown_script_is_a_one_line_error(tmp_path, text, message, llama_spm):
    with pytest.raises(TokenizerError) as info:
        parse_scripts(text)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)
    assert len(str(info.value)) <= 300
    out = tmp_path / "m.model"
    result = cli(MERGE, "--base_spm_model_path", llama_spm, "--new_spm_model_path", llama_spm,
                 "--output_spm_model_path", out, "--scripts", text)
    assert result.returncode == 2 and result.stderr == f"error: {info.value}\n"
    assert not out.exists()


def test_script_names_and_codes():
    assert parse_scripts("han, Hira,KATAKANA") == ["han", "Hira", "KATAKANA"]
    f = ScriptFilter(["Han", "Hiragana", "Katakana"])
    assert f.label("ー") == "Hiragana"  # shared by Hiragana and Katakana: the first named
    assert f.label("、") == "Han" and f.label("▁東京") == "Han" and f.label("▁") is None
    assert f.label("，") is None and f.outside("，") == "Common"
    assert f.outside("▁Привет") == "Cyrillic"


# --- merge_tokenizers.py: a base that does not normalize by identity ---------------------------

def test_merge_notes_a_base_normalizer_that_is_not_identity(tmp_path, chinese_spm, mixed_model):
    out = tmp_path / "merged.model"
    result = cli(MERGE, "--base_spm_model_path", chinese_spm, "--new_spm_model_path",
                 mixed_model, "--output_spm_model_path", out)
    assert result.returncode == 0, result.stderr
    note = result.stdout.splitlines()[-1]
    base = load_proto(chinese_spm, "x")
    appended = [p.piece.replace("\u2581", "") for p in load_proto(str(out), "x").pieces[len(base.pieces):]]
    rewritten = [p for p in appended if unicodedata.normalize("NFKC", p) != p]
    assert "，" in rewritten
    assert note == (
        f"note: --base_spm_model_path {chinese_spm} normalizes text, not by identity as LLaMA's "
        "does (nmt_nfkc: NFKC plus NMT cleanup, e.g. full-width ， becomes ',', control "
        "characters are dropped, a newline becomes a space; whitespace runs collapsed (a blank "
        f"line becomes one ▁)). The merged model keeps this rule: {len(rewritten)} appended "
        "pieces hold characters it rewrites and are never produced; a Hugging Face tokenizer "
        "exported from it gives the training ids only if it applies the same rule")
    result = merge_tokenizers(chinese_spm, mixed_model, str(out))
    assert result.note == note


def test_merge_without_scripts_is_unchanged(tmp_path, llama_spm, mixed_model):
    result = merge_tokenizers(llama_spm, mixed_model, str(tmp_path / "m.model"))
    base = load_proto(llama_spm, "x")
    base_pieces = {p.piece for p in base.pieces}
    expected = [p.piece for p in load_proto(mixed_model, "x").pieces if is_appendable(p, base_pieces)]
    assert [p.piece for p in load_proto(str(tmp_path / "m.model"), "x").pieces[32000:]] == expected
    assert result.added == len(expected) and not result.by_script and result.note is None
