"""SentencePiece tokenizer: the one place special token ids come from.

Every id (bos, eos, pad, unk) is read from the SentencePiece model itself, so
switching from the LLaMA tokenizer to a Chinese one never means editing code.

Pad fallback: when the model has no pad piece (the LLaMA tokenizer has none,
``pad_id() == -1``), ``pad_id`` is the unk id (0 for LLaMA). Padding is never
stored on disk and padded positions are excluded from both attention and loss,
so the value only has to be a valid embedding row.
"""
import hashlib
import os

import sentencepiece as spm

from tencentpretrain.errors import UserError


class TokenizerError(UserError):
    """A tokenizer file that is missing or is not a SentencePiece model."""


def file_sha256(path, chunk_size=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


class SpmTokenizer:
    def __init__(self, model_path):
        if not model_path:
            raise TokenizerError("--spm_model_path is required")
        if not os.path.isfile(model_path):
            raise TokenizerError(f"--spm_model_path {model_path}: no such file")
        self.model_path = model_path
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(model_path)
        except Exception as e:  # sentencepiece raises OSError/RuntimeError with a C++ message
            raise TokenizerError(
                f"--spm_model_path {model_path}: not a SentencePiece model ({str(e).splitlines()[0]})"
            ) from None
        self.vocab_size = self.sp.GetPieceSize()
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()
        self.unk_id = self.sp.unk_id()
        self.pad_id = self.sp.pad_id() if self.sp.pad_id() >= 0 else max(self.unk_id, 0)
        if self.bos_id < 0 or self.eos_id < 0:
            raise TokenizerError(
                f"--spm_model_path {model_path}: the model defines no bos/eos piece "
                f"(bos_id={self.bos_id}, eos_id={self.eos_id}); train it with --bos_id/--eos_id"
            )
        self._sha256 = None

    @property
    def sha256(self):
        """Hash of the model file, recorded in datasets so a mismatched tokenizer is caught."""
        if self._sha256 is None:
            self._sha256 = file_sha256(self.model_path)
        return self._sha256

    def encode(self, text):
        return self.sp.EncodeAsIds(text)

    def encode_batch(self, texts, num_threads=1):
        return self.sp.Encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids):
        return self.sp.DecodeIds([int(i) for i in ids])

    def id_to_piece(self, token_id):
        return self.sp.IdToPiece(int(token_id))
