"""The Hugging Face tokenizer files of an exported folder, so that
``AutoTokenizer.from_pretrained(folder)`` gives exactly the ids training used:
``[bos] + sentencepiece.encode(text)``, or for a tokenizer.json (``--tokenizer_path``) the
file itself with the files beside it that name its special tokens.

Without ``tokenizer_config.json`` transformers guesses: no bos, and the non-legacy prefix
handling that drops the leading ``▁`` SentencePiece puts before Chinese text. Special ids come
from the SentencePiece model (tencentpretrain/tokenizer.py), never from constants.

A SentencePiece model's ids are not what transformers' ``LlamaTokenizer`` computes from
``tokenizer.model`` alone when the model normalizes (the default ``nmt_nfkc`` rule maps ``，``
to ``,`` and a newline to a space, and collapses spaces), is a unigram model, or the text
starts with spaces. So the folder gets a ``tokenizer.json`` built here (the model's
precompiled normalization map as a ``Precompiled`` normalizer, its whitespace rules, its
pieces and scores) that ``tokenizer_config.json`` names as ``PreTrainedTokenizerFast``, and
``tokenizer.model`` for tools that read SentencePiece. Before anything is written to the
folder the files are checked: their ids must equal SentencePiece's on ``SAMPLE_TEXTS`` (and
the caller's lines) through ``tokenizers`` and, when transformers is installed, through
``AutoTokenizer``; else one line names the first text that differs.
"""
import json
import os
import shutil
import tempfile

from tencentpretrain.convert import write_json_file
from tencentpretrain.tokenizer import (HF_FILE, SPM_OPTION, TOKEN_FILES, HfTokenizer,
                                       SpmTokenizer, TokenizerError)

# Fixed sample the export's ids are checked on: fullwidth punctuation and digits, newlines,
# tabs, runs of spaces, CJK, kana, Hangul, Cyrillic, Arabic, emoji, ligatures, combining marks.
SAMPLE_TEXTS = (
    "Hello world! The quick brown fox jumps over 13 lazy dogs.",
    "北京是中国的首都。上海，广州；深圳？“引号”（括号）",
    "全角：ＡＢＣ　１２３，！？（）［］",
    "line one\nline two\n\nparagraph\ttab\r\nend",
    "数字 0123456789 and 3.14159, 1,000,000 ２０２４年",
    "emoji 😀👍🏽🎉 and symbols ©®™ ½ ① ㈱",
    "日本語のテキスト、カタカナ。한국어 텍스트. Русский текст. العربية",
    "  two leading spaces and trailing  ",
    "multiple   spaces    inside",
    "ﬁ ligature, é vs e\u0301, Ω ℃ …",
    "混合 text: GPU 显存 24GB, 价格 ¥1999!",
)
_UNIGRAM, _BPE = 1, 2  # TrainerSpec.ModelType
_MODEL_TYPES = {1: "unigram", 2: "bpe", 3: "word", 4: "char"}
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED = 1, 2, 3, 4  # SentencePiece.Type


def write_hf_tokenizer(spm_model_path, folder, model_max_length=None, check_texts=(),
                       seq2seq=False):
    """Copy the model as ``tokenizer.model`` and write ``tokenizer.json``,
    ``tokenizer_config.json``, ``special_tokens_map.json`` and ``generation_config.json``;
    returns the file names. The files are built and checked in a temporary folder and copied
    into ``folder`` only when their ids equal SentencePiece's on ``SAMPLE_TEXTS`` and
    ``check_texts``; else one line names the first text that differs. ``seq2seq`` (T5): the
    ids are ``sentencepiece.encode(text) + [eos]`` (no bos), as the seq2seq / t5 processors
    encode a source, and generation_config.json starts the decoder at pad."""
    tokenizer = SpmTokenizer(spm_model_path)
    proto = _proto(tokenizer)
    texts = list(SAMPLE_TEXTS) + [t for t in check_texts if t]
    with tempfile.TemporaryDirectory(prefix="hf_tokenizer_") as tmp:
        names = _write_spm_files(tokenizer, proto, tmp, model_max_length, seq2seq)
        bad = _first_mismatch(tmp, tokenizer, texts, seq2seq)
        if bad is not None:
            text, got, want = bad
            at = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w),
                      min(len(got), len(want)))
            raise TokenizerError(
                f"{SPM_OPTION} {spm_model_path}: the Hugging Face tokenizer built from it gives "
                f"other ids than SentencePiece ({_MODEL_TYPES.get(proto.trainer_spec.model_type)}"
                f", normalization {proto.normalizer_spec.name}) for {_short(text, 24)}: from id "
                f"{at} on {_short(got[at:at + 3])} instead of {_short(want[at:at + 3])}; "
                f"nothing written")
        os.makedirs(folder, exist_ok=True)
        for name in names:
            shutil.copyfile(os.path.join(tmp, name), os.path.join(folder, name))
    return names


def _short(value, limit=40):
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _proto(tokenizer):
    from sentencepiece import sentencepiece_model_pb2
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.sp.serialized_model_proto())
    return proto


def _write_spm_files(tokenizer, proto, folder, model_max_length, seq2seq=False):
    shutil.copyfile(tokenizer.path, os.path.join(folder, "tokenizer.model"))
    _fast_tokenizer(tokenizer, proto, seq2seq).save(os.path.join(folder, HF_FILE))
    specials = {"bos_token": tokenizer.id_to_piece(tokenizer.bos_id),
                "eos_token": tokenizer.id_to_piece(tokenizer.eos_id),
                "unk_token": tokenizer.id_to_piece(tokenizer.unk_id)}
    if tokenizer.sp.pad_id() >= 0:
        specials["pad_token"] = tokenizer.id_to_piece(tokenizer.pad_id)
    config = {
        # tokenizer.json as written: transformers' LlamaTokenizer would rebuild it without
        # the normalizer (and as BPE, also for unigram models)
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": not seq2seq,
        "add_eos_token": seq2seq,
        "clean_up_tokenization_spaces": False,
        **specials,
        "pad_token": specials.get("pad_token"),
    }
    if model_max_length:
        config["model_max_length"] = model_max_length
    write_json_file(os.path.join(folder, "tokenizer_config.json"), config)
    write_json_file(os.path.join(folder, "special_tokens_map.json"), specials)
    write_generation_config(folder, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                            seq2seq)
    return ["tokenizer.model", HF_FILE, "tokenizer_config.json", "special_tokens_map.json",
            "generation_config.json"]


def _bpe_merges(proto, vocab):
    """BPE merges in SentencePiece's order: a normal piece's splits into two pieces, by the
    merged piece's score (higher merges first), as transformers' SentencePieceExtractor."""
    merges = []
    for piece in proto.pieces:
        if piece.type != _NORMAL:
            continue
        text = piece.piece
        local = [(text[:k], text[k:]) for k in range(1, len(text))
                 if text[:k] in vocab and text[k:] in vocab]
        local.sort(key=lambda pair: (vocab[pair[0]], vocab[pair[1]]))
        merges += [(piece.score, left, right) for left, right in local]
    merges.sort(key=lambda m: (m[0], len(m[1]), len(m[2])), reverse=True)
    return [(left, right) for _, left, right in merges]


def _fast_tokenizer(tokenizer, proto, seq2seq=False):
    """A ``tokenizers.Tokenizer`` computing what SentencePiece computes for ``proto``."""
    from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                            processors)
    pieces = proto.pieces
    model_type, spec = proto.trainer_spec.model_type, proto.normalizer_spec
    byte_fallback = proto.trainer_spec.byte_fallback
    unk = tokenizer.unk_id
    if model_type == _UNIGRAM:
        model = models.Unigram([(p.piece, p.score) for p in pieces], unk_id=unk,
                               byte_fallback=byte_fallback)
    elif model_type == _BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        model = models.BPE(vocab, _bpe_merges(proto, vocab), unk_token=pieces[unk].piece,
                           fuse_unk=True, byte_fallback=byte_fallback, dropout=None)
    else:
        kind = "word" if model_type == 3 else "char"
        raise TokenizerError(f"{SPM_OPTION} {tokenizer.path}: a {kind} model has no Hugging Face "
                             "equivalent here; use a bpe or unigram model")
    fast = Tokenizer(model)
    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # SentencePiece: only " " after the map counts
        steps += [normalizers.Replace(Regex("^ +| +$"), ""),
                  normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:  # after the whitespace rules, as SentencePiece; never on ""
        steps.append(normalizers.Prepend("▁"))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if proto.trainer_spec.treat_whitespace_as_suffix:
        raise TokenizerError(f"{SPM_OPTION} {tokenizer.path}: treat_whitespace_as_suffix has no "
                             "Hugging Face equivalent here")
    if steps:
        fast.normalizer = normalizers.Sequence(steps)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    fast.decoder = decoders.Sequence(steps)
    fast.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                             for p in pieces if p.type in (_CONTROL, _UNKNOWN)])
    fast.add_tokens([AddedToken(p.piece, special=False, normalized=False)
                     for p in pieces if p.type == _USER_DEFINED])
    if seq2seq:  # T5: text then eos
        eos = tokenizer.id_to_piece(tokenizer.eos_id)
        fast.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}",
            special_tokens=[(eos, tokenizer.eos_id)])
        return fast
    bos = tokenizer.id_to_piece(tokenizer.bos_id)
    fast.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_id)])
    return fast


def _first_mismatch(folder, tokenizer, texts, seq2seq=False):
    """(text, ids, SentencePiece ids) of the first text whose ids differ, or None: through
    ``tokenizers``, and through ``AutoTokenizer`` (what users load) when transformers is
    installed."""
    from tokenizers import Tokenizer
    loaded = Tokenizer.from_file(os.path.join(folder, HF_FILE))
    encoders = [lambda text: loaded.encode(text).ids]
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None:
        auto = transformers.AutoTokenizer.from_pretrained(folder)
        encoders.append(lambda text: list(auto(text)["input_ids"]))
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # no "longer than model_max_length" notes
    try:
        for text in texts:
            want = (tokenizer.encode(text) + [tokenizer.eos_id] if seq2seq
                    else [tokenizer.bos_id] + tokenizer.encode(text))
            for encode in encoders:
                got = encode(text)
                if got != want:
                    return text, got, want
        return None
    finally:
        if transformers is not None:
            transformers.logging.set_verbosity(verbosity)


def write_generation_config(folder, bos_id, eos_id, pad_id, seq2seq=False):
    """generation_config.json; ``seq2seq`` (T5): the decoder starts at pad, no bos."""
    if seq2seq:
        content = {"decoder_start_token_id": pad_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    else:
        content = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    write_json_file(os.path.join(folder, "generation_config.json"), content)


def copy_hf_tokenizer(tokenizer, folder, model_max_length=None, seq2seq=False):
    """Copy an HfTokenizer's tokenizer.json and the tokenizer_config.json /
    special_tokens_map.json beside it; without a tokenizer_config.json, write one naming the
    special tokens for ``PreTrainedTokenizerFast`` (its post-processor adds the bos, as ours
    does). Returns the file names."""
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(tokenizer.path, os.path.join(folder, HF_FILE))
    written = [HF_FILE]
    beside = os.path.dirname(tokenizer.path)
    for name in TOKEN_FILES:
        if os.path.isfile(os.path.join(beside, name)):
            shutil.copyfile(os.path.join(beside, name), os.path.join(folder, name))
            written.append(name)
    if TOKEN_FILES[0] not in written:
        def piece(token_id):
            return None if token_id is None else tokenizer.id_to_piece(token_id)

        config = {"tokenizer_class": "PreTrainedTokenizerFast",
                  "bos_token": piece(tokenizer.bos_id), "eos_token": piece(tokenizer.eos_id),
                  "pad_token": piece(tokenizer.pad_id), "unk_token": piece(tokenizer.unk_id),
                  "clean_up_tokenization_spaces": False}
        if model_max_length:
            config["model_max_length"] = model_max_length
        write_json_file(os.path.join(folder, TOKEN_FILES[0]), config)
        written.append(TOKEN_FILES[0])
    write_generation_config(folder, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id,
                            seq2seq)
    return written + ["generation_config.json"]


def write_chat_template(folder, jinja, stop_ids):
    """A chat template into an exported folder: ``chat_template`` of tokenizer_config.json (what
    ``apply_chat_template`` renders) and the stop ids as the ``eos_token_id`` list of
    generation_config.json (what ``generate`` stops at: eos and the end-of-turn token)."""
    for name, key, value in (("tokenizer_config.json", "chat_template", jinja),
                             ("generation_config.json", "eos_token_id", list(stop_ids))):
        path = os.path.join(folder, name)
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
        content[key] = value
        write_json_file(os.path.join(folder, name), content)


def export_tokenizer(tokenizer, folder, model_max_length=None, check_texts=(), seq2seq=False):
    """The tokenizer files of either kind (tencentpretrain/tokenizer.py) into ``folder``;
    a SentencePiece model's are checked on ``SAMPLE_TEXTS`` + ``check_texts`` first.
    ``seq2seq``: T5's encoding (text + eos) and decoder start (pad)."""
    if isinstance(tokenizer, HfTokenizer):
        return copy_hf_tokenizer(tokenizer, folder, model_max_length, seq2seq)
    return write_hf_tokenizer(tokenizer.path, folder, model_max_length, check_texts, seq2seq)
