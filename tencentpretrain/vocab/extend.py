"""Resize a checkpoint's embedding and output rows from a base tokenizer to a new one.

Rows are carried over by piece string, so any pair of tokenizers works (appended pieces or a
different vocabulary altogether). A piece the base lacks gets a new row:

- ``mean``: the mean of all base rows (Hugging Face's ``resize_token_embeddings`` default);
- ``subword_mean`` (default): the mean of the rows of the base pieces that spell the piece
  (fast vocabulary transfer), for the input and the output rows alike, so the model starts
  out reading and predicting the new piece roughly as the pieces it replaces.

``pad_to_multiple_of`` adds zero rows up to a multiple (tensor-core friendly shapes); the
tokenizer never produces their ids, and generation never picks them.
"""
import sentencepiece as spm
import torch

from tencentpretrain.config import load_config
from tencentpretrain.model_builder import build_model, check_state_dict
from tencentpretrain.models.layout import EMBEDDING, OUTPUT
from tencentpretrain.tokenizer import TokenizerError
from tencentpretrain.utils.weights import WeightsError, load_state_dict_file, save_state_dict_file
from tencentpretrain.vocab.spm_model import check_same_layout, load_processor, load_proto

INITS = ("subword_mean", "mean")
WHITESPACE = "\u2581"


def spell_without_prefix(base_spm_model_path):
    """A processor of the base model without its dummy prefix: ``encode`` then spells a piece
    string (``▁`` as a space) with base pieces exactly, adding no ``▁`` of its own."""
    proto = load_proto(base_spm_model_path, "--base_spm_model_path")
    proto.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(proto.SerializeToString())
    return sp


def row_plan(base_sp, new_sp, speller):
    """For each new id: ("copy", base_id) or ("spell", [base ids]) -- the base pieces of its
    text, from which ``subword_mean`` averages."""
    base_ids = {base_sp.IdToPiece(i): i for i in range(base_sp.GetPieceSize())}
    plan = []
    for new_id in range(new_sp.GetPieceSize()):
        piece = new_sp.IdToPiece(new_id)
        if piece in base_ids:
            plan.append(("copy", base_ids[piece]))
        else:
            spelled = speller.EncodeAsIds(piece.replace(WHITESPACE, " ")) or [base_sp.unk_id()]
            plan.append(("spell", spelled))
    return plan


def padded_size(size, pad_to_multiple_of):
    if pad_to_multiple_of is None:
        return size
    if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0:
        raise TokenizerError(f"--pad_to_multiple_of {pad_to_multiple_of}: a positive integer")
    return -(-size // pad_to_multiple_of) * pad_to_multiple_of


def resize_rows(weight, plan, init, rows):
    """The new [rows, hidden] matrix: copied rows, new rows by ``init``, zero pad rows."""
    old = weight.float()
    out = torch.zeros(rows, old.shape[1], dtype=torch.float32)
    copied = [(new_id, src) for new_id, (kind, src) in enumerate(plan) if kind == "copy"]
    spelled = [(new_id, ids) for new_id, (kind, ids) in enumerate(plan) if kind == "spell"]
    if copied:
        targets, sources = zip(*copied)
        out[list(targets)] = old[list(sources)]
    if spelled:
        targets, spellings = zip(*spelled)
        if init == "subword_mean":
            flat = torch.tensor([i for ids in spellings for i in ids])
            offsets = torch.tensor([0] + [len(ids) for ids in spellings[:-1]]).cumsum(0)
            out[list(targets)] = torch.nn.functional.embedding_bag(flat, old, offsets,
                                                                   mode="mean")
        else:
            out[list(targets)] = old.mean(dim=0)
    return out.to(weight.dtype)


def extend_state_dict(state, base_sp, new_sp, speller, init="subword_mean",
                      pad_to_multiple_of=None, path="<state dict>"):
    """A new state dict whose embedding/output rows follow ``new_sp``; other tensors shared."""
    if init not in INITS:
        raise TokenizerError(f"--init {init}: expected one of {', '.join(INITS)}")
    rows_in = int(state[EMBEDDING].shape[0])
    if rows_in != base_sp.GetPieceSize():
        raise WeightsError(f"{path}: {EMBEDDING} has {rows_in} rows, --base_spm_model_path has "
                           f"{base_sp.GetPieceSize()} pieces; pass the tokenizer the "
                           "checkpoint was trained with")
    rows = padded_size(new_sp.GetPieceSize(), pad_to_multiple_of)
    plan = row_plan(base_sp, new_sp, speller)
    extended = dict(state)
    for name in (EMBEDDING, OUTPUT):
        if name in state:  # OUTPUT is absent from tied checkpoints
            extended[name] = resize_rows(state[name], plan, init, rows)
    return extended, sum(kind == "copy" for kind, _ in plan), rows


def extend_vocab(input_model_path, config_path, base_spm_model_path, spm_model_path,
                 output_model_path, init="subword_mean", pad_to_multiple_of=None, log=print):
    base_sp = load_processor(base_spm_model_path, "--base_spm_model_path")
    new_sp = load_processor(spm_model_path, "--spm_model_path")
    check_same_layout(base_sp, new_sp, "--spm_model_path", spm_model_path)
    padded_size(new_sp.GetPieceSize(), pad_to_multiple_of)  # option errors before loading
    config = load_config(config_path)
    state = load_state_dict_file(input_model_path)
    if EMBEDDING not in state:
        raise WeightsError(f"{input_model_path}: no {EMBEDDING}; not a TencentPretrain LLaMA "
                           "checkpoint")
    check_state_dict(build_model(config, int(state[EMBEDDING].shape[0]), device="meta"), state,
                     input_model_path)
    extended, copied, rows = extend_state_dict(
        state, base_sp, new_sp, spell_without_prefix(base_spm_model_path), init,
        pad_to_multiple_of, input_model_path)
    save_state_dict_file(extended, output_model_path)
    new_rows = new_sp.GetPieceSize() - copied
    log(f"wrote {output_model_path}: {rows} rows ({copied} carried over, {new_rows} new by "
        f"{init}, {rows - new_sp.GetPieceSize()} padding)")
    return output_model_path
