"""The Hugging Face tokenizer files of an exported folder, so that
``AutoTokenizer.from_pretrained(folder)`` gives exactly the ids training used:
``[bos] + sentencepiece.encode(text)``, or for a tokenizer.json (``--tokenizer_path``) the
file itself with the files beside it that name its special tokens.

Without ``tokenizer_config.json`` transformers guesses: no bos, and the non-legacy prefix
handling that drops the leading ``▁`` SentencePiece puts before Chinese text. Special ids come
from the SentencePiece model (tencentpretrain/tokenizer.py), never from constants.
"""
import json
import os
import shutil

from tencentpretrain.tokenizer import HF_FILE, TOKEN_FILES, HfTokenizer, SpmTokenizer


def _write_json(folder, name, content):
    with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_hf_tokenizer(spm_model_path, folder, model_max_length=None):
    """Copy the model as ``tokenizer.model`` and write ``tokenizer_config.json``,
    ``special_tokens_map.json`` and ``generation_config.json``; returns the file names."""
    tokenizer = SpmTokenizer(spm_model_path)
    os.makedirs(folder, exist_ok=True)
    shutil.copyfile(spm_model_path, os.path.join(folder, "tokenizer.model"))
    specials = {"bos_token": tokenizer.id_to_piece(tokenizer.bos_id),
                "eos_token": tokenizer.id_to_piece(tokenizer.eos_id),
                "unk_token": tokenizer.id_to_piece(tokenizer.unk_id)}
    has_pad_piece = tokenizer.sp.pad_id() >= 0
    if has_pad_piece:
        specials["pad_token"] = tokenizer.id_to_piece(tokenizer.pad_id)
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,  # SentencePiece's own handling of the dummy prefix
        "add_prefix_space": True,
        "clean_up_tokenization_spaces": False,
        "sp_model_kwargs": {},
        **specials,
        "pad_token": specials.get("pad_token"),
    }
    if model_max_length:
        config["model_max_length"] = model_max_length
    _write_json(folder, "tokenizer_config.json", config)
    _write_json(folder, "special_tokens_map.json", specials)
    _write_generation_config(folder, tokenizer)
    return ["tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
            "generation_config.json"]


def _write_generation_config(folder, tokenizer):
    _write_json(folder, "generation_config.json", {
        "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
        "pad_token_id": tokenizer.pad_id,
    })


def copy_hf_tokenizer(tokenizer, folder, model_max_length=None):
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
        _write_json(folder, TOKEN_FILES[0], config)
        written.append(TOKEN_FILES[0])
    _write_generation_config(folder, tokenizer)
    return written + ["generation_config.json"]


def export_tokenizer(tokenizer, folder, model_max_length=None):
    """The tokenizer files of either kind (tencentpretrain/tokenizer.py) into ``folder``."""
    if isinstance(tokenizer, HfTokenizer):
        return copy_hf_tokenizer(tokenizer, folder, model_max_length)
    return write_hf_tokenizer(tokenizer.path, folder, model_max_length)
