"""Reading SentencePiece models as protos, and the special-piece layout they share."""
import os

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from tencentpretrain.tokenizer import TokenizerError

NORMAL = model_pb2.ModelProto.SentencePiece.NORMAL
MODEL_TYPE_NAMES = {model_pb2.TrainerSpec.UNIGRAM: "unigram", model_pb2.TrainerSpec.BPE: "bpe",
                    model_pb2.TrainerSpec.WORD: "word", model_pb2.TrainerSpec.CHAR: "char"}


def load_processor(path, option):
    """A loaded SentencePieceProcessor; ``option`` names the flag in errors."""
    if not os.path.isfile(path):
        raise TokenizerError(f"{option} {path}: no such file")
    sp = spm.SentencePieceProcessor()
    try:
        sp.Load(path)
    except Exception as e:  # noqa: BLE001 - sentencepiece raises OSError/RuntimeError
        raise TokenizerError(f"{option} {path}: not a SentencePiece model "
                             f"({str(e).strip().splitlines()[0]})") from None
    return sp


def load_proto(path, option):
    """The ModelProto of ``path``, validated by SentencePiece itself first (protobuf alone
    parses many byte strings that are no model)."""
    proto = model_pb2.ModelProto()
    proto.ParseFromString(load_processor(path, option).serialized_model_proto())
    return proto


def special_layout(sp):
    """{role: (id, piece)} for unk/bos/eos; id -1 and piece None when the model has none."""
    ids = {"unk": sp.unk_id(), "bos": sp.bos_id(), "eos": sp.eos_id()}
    return {role: (i, sp.IdToPiece(i) if i >= 0 else None) for role, i in ids.items()}


def check_same_layout(base_sp, sp, option, path):
    """Refuse a tokenizer whose unk/bos/eos differ from the base's, naming what differs."""
    base, other = special_layout(base_sp), special_layout(sp)
    diffs = [f"{role} is {other[role][1]!r} (id {other[role][0]}), the base's "
             f"{base[role][1]!r} (id {base[role][0]})"
             for role in base if base[role] != other[role]]
    if diffs:
        raise TokenizerError(f"{option} {path}: a different special-token layout than the base: "
                             + "; ".join(diffs))
