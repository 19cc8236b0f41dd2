"""Convert TencentPretrain T5 weights (an encoder-decoder config: models/t5/*, models/t5-v1_1/*)
into a Hugging Face folder (config.json + model.safetensors) that
``T5ForConditionalGeneration.from_pretrained`` loads; with --spm_model_path or
--tokenizer_path also the tokenizer files (ids = text + eos, as the seq2seq / t5 processors
encode a source) and generation_config.json (decoder_start_token_id = pad, eos, pad).

The LLaMA export's guards apply (the same functions): an output folder already holding weight
files is refused, and every tensor's shape is checked against the config before anything is
written."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.config import ConfigError, load_config  # noqa: E402
from tencentpretrain.convert import add_export_options, write_hf_folder  # noqa: E402
from tencentpretrain.convert.hf_llama import check_output_folder, checked_hf_state  # noqa: E402
from tencentpretrain.convert.hf_t5 import config_to_hf, tencentpretrain_to_hf  # noqa: E402
from tencentpretrain.convert.hf_tokenizer import (export_tokenizer,  # noqa: E402
                                                  write_generation_config)
from tencentpretrain.tokenizer import add_tokenizer_options, load_tokenizer  # noqa: E402
from tencentpretrain.utils.cli import run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_export_options(parser, input_help="TencentPretrain T5 weights (.bin or .safetensors).",
                       config_help="Model config JSON (with a decoder).")
    add_tokenizer_options(
        parser, required=False,
        spm_help="Tokenizer: pad/eos ids for config.json, and tokenizer.model, tokenizer.json, "
                 "tokenizer_config.json, special_tokens_map.json and generation_config.json.",
        hf_help="Tokenizer (tokenizer.json or its folder): pad/eos ids for config.json, and its "
                "files and generation_config.json in the folder.")
    args = parser.parse_args(argv)
    run(lambda: convert(args))


def convert(args):
    pad_id, eos_id, tokenizer = 0, 1, None  # T5's vocabulary
    if args.spm_model_path or args.tokenizer_path:  # first: a bad path fails before heavy work
        tokenizer = load_tokenizer(args.spm_model_path, args.tokenizer_path)
        pad_id, eos_id = tokenizer.pad_id, tokenizer.eos_id
    config = load_config(args.config_path)
    if not config.decoder:
        raise ConfigError(f"{args.config_path} names no decoder; decoder-only models export with "
                          "scripts/convert_tencentpretrain_to_llama_huggingface.py")
    config_to_hf(config, 0)  # refuses a shape T5ForConditionalGeneration does not compute
    check_output_folder(args.output_model_path)
    hf_state, vocab_size, dtype = checked_hf_state(args.input_model_path, config,
                                                   args.config_path, tencentpretrain_to_hf)
    hf_config = config_to_hf(config, vocab_size, pad_id, eos_id, dtype)
    if tokenizer:  # first: its ids are checked, and a refusal leaves the folder as it was
        written = export_tokenizer(tokenizer, args.output_model_path, config.max_seq_length,
                                   seq2seq=True)
    else:
        os.makedirs(args.output_model_path, exist_ok=True)
        write_generation_config(args.output_model_path, None, eos_id, pad_id, seq2seq=True)
        written = ["generation_config.json"]
    write_hf_folder(args.output_model_path, hf_config, hf_state, written)


if __name__ == "__main__":
    main()
