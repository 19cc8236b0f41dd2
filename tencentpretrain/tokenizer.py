"""Tokenizers: the one place special token ids come from.

Two kinds share one interface (``vocab_size``, ``bos_id``, ``eos_id``, ``pad_id``, ``unk_id``,
``add_bos``, ``bos_ids``, ``sha256``, ``encode``, ``encode_batch``, ``decode``,
``id_to_piece``); ``load_tokenizer`` picks one from the command-line options:

* ``--spm_model_path``: a SentencePiece model (LLaMA-1/2, Chinese LLaMA). Every id is read
  from the model itself; a bos is always put before a document.
* ``--tokenizer_path``: a Hugging Face ``tokenizer.json`` (byte-level BPE as LLaMA-3 and
  Qwen2.5 ship), or a folder holding one. Special tokens come from its own files (see
  ``HfTokenizer``), so switching model families never means editing code.

Pad fallback: padding is never stored on disk and padded positions are excluded from both
attention and loss, so ``pad_id`` only has to be a valid embedding row: a SentencePiece model
without a pad piece (LLaMA's) pads with unk, a tokenizer.json without a pad token with eos.
"""
import hashlib
import os

import sentencepiece as spm

from tencentpretrain.errors import UserError
from tencentpretrain.utils.files import read_json

SPM_OPTION, HF_OPTION = "--spm_model_path", "--tokenizer_path"
HF_FILE = "tokenizer.json"
# Files beside tokenizer.json that name its special tokens, most authoritative first.
TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")
# Files beside it that give special ids (model and generation configs), used last.
ID_FILES = ("generation_config.json", "config.json")


class TokenizerError(UserError):
    """A tokenizer file that is missing or cannot be read; the message is one line."""


def file_sha256(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def add_tokenizer_options(group, required=True, spm_help=None, hf_help=None):
    """``--spm_model_path`` / ``--tokenizer_path``, one of them (``required``), never both."""
    choice = group.add_mutually_exclusive_group(required=required)
    choice.add_argument(SPM_OPTION, default=None,
                        help=spm_help or "SentencePiece model (e.g. LLaMA-2's tokenizer.model).")
    choice.add_argument(HF_OPTION, default=None,
                        help=hf_help or "Hugging Face tokenizer.json (e.g. LLaMA-3's, Qwen2.5's), "
                                        "or a folder holding one; special tokens come from it and "
                                        "the tokenizer_config.json beside it.")
    return choice


def load_tokenizer(spm_model_path=None, tokenizer_path=None):
    """The tokenizer named by exactly one of the two options."""
    if spm_model_path and tokenizer_path:
        raise TokenizerError(f"{SPM_OPTION} and {HF_OPTION} both given; pass one tokenizer")
    if tokenizer_path:
        return HfTokenizer(tokenizer_path)
    if spm_model_path:
        return SpmTokenizer(spm_model_path)
    raise TokenizerError(f"a tokenizer is required: {SPM_OPTION} or {HF_OPTION}")


class _Tokenizer:
    """What both kinds share: the source options, the bos rule and the file hash."""
    option = None  # SPM_OPTION or HF_OPTION
    spm_model_path = tokenizer_path = None  # the one that loads this tokenizer again
    path = None  # the file hashed into datasets
    add_bos = True  # whether a bos id is put before every document / prompt
    bos_id = None
    _sha256 = None

    @property
    def bos_ids(self):
        """The ids put before every document and prompt: [bos_id] or nothing."""
        return [self.bos_id] if self.add_bos else []

    @property
    def sha256(self):
        """Hash of the tokenizer file, recorded in datasets so a mismatched tokenizer is caught."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @property
    def source(self):
        """``OPTION PATH``, for messages."""
        return f"{self.option} {self.path}"


class SpmTokenizer(_Tokenizer):
    option = SPM_OPTION

    def __init__(self, model_path):
        if not model_path:
            raise TokenizerError(f"{SPM_OPTION} is required")
        if not os.path.isfile(model_path):
            raise TokenizerError(f"{SPM_OPTION} {model_path}: no such file")
        self.spm_model_path = self.path = model_path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(model_path)
        except Exception as e:  # sentencepiece raises OSError/RuntimeError with a C++ message
            hint = (f"; a Hugging Face tokenizer.json goes to {HF_OPTION}"
                    if model_path.endswith(".json") else "")
            raise TokenizerError(f"{SPM_OPTION} {model_path}: not a SentencePiece model "
                                 f"({str(e).splitlines()[0]}){hint}") from None
        self.vocab_size = self.sp.GetPieceSize()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.unk_id = self.sp.unk_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else max(self.unk_id, 0)
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(
                f"{SPM_OPTION} {model_path}: the model defines no bos/eos piece "
                f"(bos_id={self.bos_id}, eos_id={self.eos_id}); train it with --bos_id/--eos_id"
            )

    def encode(self, text):
        return self.sp.EncodeAsIds(text)

    def encode_batch(self, texts, num_threads=1):
        return self.sp.Encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids):
        return self.sp.DecodeIds([int(i) for i in ids])

    def id_to_piece(self, token_id):
        return self.sp.IdToPiece(int(token_id))


def _token_text(value):
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


class HfTokenizer(_Tokenizer):
    """A Hugging Face ``tokenizer.json``, read with the ``tokenizers`` library.

    Special tokens, each from the first of these that names it:
    ``tokenizer_config.json`` then ``special_tokens_map.json`` beside the file (``bos_token``
    / ``eos_token`` / ``pad_token`` / ``unk_token``; null means none, as Qwen2.5's bos), then
    what the post-processor puts around a text (LLaMA-3's template adds
    ``<|begin_of_text|>``), then ``generation_config.json`` / ``config.json`` ids.
    Whether a bos is added: ``add_bos_token`` of tokenizer_config.json if set, else whether
    the post-processor adds one. Text is encoded without the post-processor's specials, and
    ``bos_ids`` is put in front by the data processors and generation, so a bos is never
    doubled; truncation and padding stored in the file are switched off.
    """
    option = HF_OPTION

    def __init__(self, tokenizer_path):
        from tokenizers import Tokenizer  # imported here: SentencePiece-only runs never need it

        file = os.path.join(tokenizer_path, HF_FILE) if os.path.isdir(tokenizer_path) else tokenizer_path
        if not os.path.exists(tokenizer_path):
            raise TokenizerError(f"{HF_OPTION} {tokenizer_path}: no such file or folder")
        if not os.path.isfile(file):
            raise TokenizerError(f"{HF_OPTION} {tokenizer_path}: a folder without {HF_FILE}")
        self.tokenizer_path, self.path = tokenizer_path, file
        try:
            self.hf = Tokenizer.from_file(file)
        except Exception as e:  # the Rust side raises a bare Exception with the serde message
            hint = f"; a SentencePiece .model goes to {SPM_OPTION}" if file.endswith(".model") else ""
            raise TokenizerError(f"{HF_OPTION} {file}: not a Hugging Face tokenizer.json "
                                 f"({str(e).splitlines()[0]}){hint}") from None
        self.hf.no_truncation()
        self.hf.no_padding()
        vocab = self.hf.get_vocab(with_added_tokens=True)
        self.vocab_size = 1 + max(vocab.values())
        self._files = self._read_files(os.path.dirname(file))
        before, after = self._post_processor_specials()
        bos = self._special("bos", before)
        self.eos_id = self._special("eos", after)
        if self.eos_id is None:
            raise TokenizerError(f"{HF_OPTION} {file}: no eos token (not in the post-processor nor "
                                 f"in {', '.join(TOKEN_FILES + ID_FILES)} beside it); "
                                 f"documents need one to end")
        add_bos = self._files[TOKEN_FILES[0]].get("add_bos_token")
        self.add_bos = bool(before) if add_bos is None else bool(add_bos)
        if self.add_bos and bos is None:
            raise TokenizerError(f"{HF_OPTION} {file}: a bos is added but no bos token is named")
        self.bos_id = bos
        self.unk_id = self._special("unk", [])
        if self.unk_id is None and getattr(self.hf.model, "unk_token", None):
            self.unk_id = self.hf.token_to_id(self.hf.model.unk_token)
        pad = self._special("pad", [])
        self.pad_id = self.eos_id if pad is None else pad

    @staticmethod
    def _read_files(folder):
        """The JSON files beside tokenizer.json that exist, by name ({} where absent)."""
        paths = {name: os.path.join(folder, name) for name in TOKEN_FILES + ID_FILES}
        return {name: read_json(path, TokenizerError, f"{HF_OPTION}: {path}", expect=dict)
                if os.path.isfile(path) else {} for name, path in paths.items()}

    def _post_processor_specials(self):
        """The ids the post-processor puts before and after a text (e.g. [bos], [])."""
        plain = self.hf.encode("a", add_special_tokens=False).ids
        full = self.hf.encode("a", add_special_tokens=True).ids
        for start in range(len(full) - len(plain) + 1):
            if full[start:start + len(plain)] == plain:
                return full[:start], full[start + len(plain):]
        return [], []

    def _special(self, name, from_post_processor):
        """The id of special token ``name`` (bos/eos/pad/unk), or None (see the class doc)."""
        key = f"{name}_token"
        for file in TOKEN_FILES:
            if key in self._files[file]:
                text = _token_text(self._files[file][key])
                if text is None:
                    return None
                token_id = self.hf.token_to_id(text)
                if token_id is None:
                    raise TokenizerError(f"{HF_OPTION} {self.path}: {file} names {key} "
                                         f"{text!r}, which is not in {HF_FILE}")
                return token_id
        if len(from_post_processor) == 1:
            return from_post_processor[0]
        if len(from_post_processor) > 1:
            raise TokenizerError(f"{HF_OPTION} {self.path}: the post-processor adds "
                                 f"{len(from_post_processor)} tokens around a text; only a "
                                 f"single bos before and eos after are supported")
        for file in ID_FILES:
            value = self._files[file].get(f"{name}_token_id")
            if isinstance(value, list):  # LLaMA-3.1 Instruct: several ids end a generation
                value = value[0] if value else None
            if isinstance(value, int):
                return value
        return None

    def encode(self, text):
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts, num_threads=1):
        """One Rust call for the batch; ``num_threads`` > 1 lets it use every core (the
        ``tokenizers`` thread pool cannot be sized per call), 1 keeps it on this one, which
        is what each of preprocess.py's worker processes wants."""
        os.environ["TOKENIZERS_PARALLELISM"] = "true" if num_threads > 1 else "false"
        return [e.ids for e in self.hf.encode_batch_fast(list(texts), add_special_tokens=False)]

    def decode(self, ids):
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, token_id):
        return self.hf.id_to_token(int(token_id))
