"""Special tokens appended to a SentencePiece model (``scripts/extend_vocab.py
--add_special_tokens``), e.g. ChatML's ``<|im_start|>`` / ``<|im_end|>`` on LLaMA's tokenizer.

They are appended as user-defined pieces: SentencePiece then takes each occurrence in a text as
one token (a control piece never comes out of text), the HF export writes them as added tokens,
and chat templates (chat_templates.py) find them as single tokens. Existing ids are unchanged,
so a checkpoint only gains rows (``extend_vocab`` with ``mean``: the mean of all base rows).
"""
from sentencepiece import sentencepiece_model_pb2 as model_pb2

from tencentpretrain.tokenizer import TokenizerError
from tencentpretrain.vocab.spm_model import load_processor, load_proto

USER_DEFINED = model_pb2.ModelProto.SentencePiece.USER_DEFINED
CONTROL = model_pb2.ModelProto.SentencePiece.CONTROL


def parse_tokens(value, option="--add_special_tokens"):
    """``"<|im_start|>,<|im_end|>"`` -> the tokens, in order, without duplicates."""
    tokens = []
    for token in value.split(","):
        token = token.strip()
        if not token:
            raise TokenizerError(f"{option} {value!r}: an empty token (comma-separated, e.g. "
                                 f'"<|im_start|>,<|im_end|>")')
        if any(ch.isspace() for ch in token):
            raise TokenizerError(f"{option}: {token!r} holds whitespace; a special token is one "
                                 "piece without spaces")
        if token not in tokens:
            tokens.append(token)
    return tokens


def add_special_tokens(spm_model_path, tokens, output_spm_model_path, option="--spm_model_path"):
    """Write ``spm_model_path`` with ``tokens`` appended as user-defined pieces to
    ``output_spm_model_path``; returns the tokens added (those already user-defined or control
    pieces are kept where they are). A token that is an ordinary piece is refused: text would
    not always come out as that one piece."""
    proto = load_proto(spm_model_path, option)
    existing = {p.piece: p.type for p in proto.pieces}
    added = []
    for token in tokens:
        kind = existing.get(token)
        if kind in (USER_DEFINED, CONTROL):
            continue
        if kind is not None:
            raise TokenizerError(f"{option} {spm_model_path}: {token} is already an ordinary piece "
                                 "(text may split it); choose another special token")
        piece = proto.pieces.add()
        piece.piece, piece.score, piece.type = token, 0.0, USER_DEFINED
        added.append(token)
    with open(output_spm_model_path, "wb") as f:
        f.write(proto.SerializeToString())
    sp = load_processor(output_spm_model_path, "--output_spm_model_path")
    for token in tokens:  # each is one token of a text around it
        token_id = sp.PieceToId(token)
        if token_id not in sp.EncodeAsIds(f"a{token}b"):
            raise TokenizerError(f"--output_spm_model_path {output_spm_model_path}: {token} does "
                                 "not come out of text as one piece")
    return added
