"""Convert TencentPretrain LLaMA weights into a Hugging Face folder
(config.json + model.safetensors) that ``AutoModelForCausalLM.from_pretrained`` loads; with
--spm_model_path or --tokenizer_path also the tokenizer files, so ``AutoTokenizer`` gives the
training ids."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tencentpretrain.config import load_config  # noqa: E402
from tencentpretrain.convert import add_export_options, write_hf_folder  # noqa: E402
from tencentpretrain.convert.hf_llama import (check_output_folder, checked_hf_state,  # noqa: E402
                                              config_to_hf, hf_family, tencentpretrain_to_hf)
from tencentpretrain.chat import export_template  # noqa: E402
from tencentpretrain.convert.hf_tokenizer import export_tokenizer, write_chat_template  # noqa: E402
from tencentpretrain.tokenizer import (TokenizerError, add_tokenizer_options,  # noqa: E402
                                       load_tokenizer)
from tencentpretrain.utils.cli import run  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_export_options(parser, input_help="TencentPretrain weights (.bin or .safetensors), e.g. "
                                          "a pretrain.py output such as models/llama_zh_7b-5000.",
                       config_help="Model config JSON.")
    add_tokenizer_options(
        parser, required=False,
        spm_help="Tokenizer: bos/eos ids for config.json, and tokenizer.model, "
                 "tokenizer_config.json, special_tokens_map.json and generation_config.json "
                 "in the folder.",
        hf_help="Tokenizer (tokenizer.json or its folder): bos/eos ids for config.json, and "
                "tokenizer.json, its tokenizer_config.json (written when absent), "
                "special_tokens_map.json and generation_config.json in the folder.")
    parser.add_argument("--tokenizer_check_path", default=None,
                        help="Text file: its first 1000 lines are checked as well as a fixed "
                             "multilingual sample; the exported tokenizer must give the "
                             "SentencePiece ids on all of them.")
    parser.add_argument("--chat_template", default=None,
                        help="Chat template written as chat_template of tokenizer_config.json, "
                             "its end-of-turn token joining eos in generation_config.json's "
                             "eos_token_id list: a name (chatml, llama3, llama2, mistral, alpaca, "
                             "tokenizer) or the conversation dataset the model was tuned on "
                             "(its meta.json records the template).")
    args = parser.parse_args(argv)
    if args.chat_template and not (args.spm_model_path or args.tokenizer_path):
        parser.error("--chat_template needs --spm_model_path or --tokenizer_path")
    run(lambda: convert(args))


def read_check_lines(path, limit=1000):
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for _, line in zip(range(limit), f)]
    except FileNotFoundError:
        raise TokenizerError(f"--tokenizer_check_path {path}: no such file") from None
    except UnicodeDecodeError:
        raise TokenizerError(f"--tokenizer_check_path {path}: not UTF-8 text") from None
    except OSError as e:
        raise TokenizerError(f"--tokenizer_check_path {path}: {e.strerror}") from None


def convert(args):
    bos_id, eos_id, tokenizer = 1, 2, None
    if args.spm_model_path or args.tokenizer_path:  # first: a bad path fails before heavy work
        tokenizer = load_tokenizer(args.spm_model_path, args.tokenizer_path)
        bos_id, eos_id = tokenizer.bos_id, tokenizer.eos_id
    chat = export_template(args.chat_template, tokenizer) if args.chat_template else None
    config = load_config(args.config_path)
    hf_family(config)
    check_output_folder(args.output_model_path)
    check_texts = []
    if args.tokenizer_check_path:
        if not tokenizer:
            raise TokenizerError("--tokenizer_check_path needs --spm_model_path or --tokenizer_path")
        check_texts = read_check_lines(args.tokenizer_check_path)
    hf_state, vocab_size, dtype = checked_hf_state(args.input_model_path, config,
                                                   args.config_path, tencentpretrain_to_hf)
    hf_config = config_to_hf(config, vocab_size, bos_id, eos_id, dtype)
    written = []
    if tokenizer:  # first: its ids are checked, and a refusal leaves the folder as it was
        written = export_tokenizer(tokenizer, args.output_model_path, config.max_seq_length,
                                   check_texts)
        if chat:
            write_chat_template(args.output_model_path, *chat)
    write_hf_folder(args.output_model_path, hf_config, hf_state, written)


if __name__ == "__main__":
    main()
