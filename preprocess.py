"""Tokenize a corpus into a token dataset directory for pretrain.py.

    python3 preprocess.py --corpus_path corpus.txt --spm_model_path tokenizer.model \
        --dataset_path dataset --data_processor lm --seq_length 512 --processes_num 8

(or --tokenizer_path tokenizer.json for a Hugging Face tokenizer, e.g. LLaMA-3's or Qwen2.5's).

The format is described in docs/data_format.md; the work is done by tencentpretrain.data.
"""
import argparse
import signal
import sys

from tencentpretrain.chat_templates import TEMPLATE_NAMES
from tencentpretrain.data import PROCESSORS, format_summary, preprocess
from tencentpretrain.data.format import SHARD_TOKENS, DatasetError
from tencentpretrain.tokenizer import add_tokenizer_options
from tencentpretrain.utils.cli import run


def build_parser():
    parser = argparse.ArgumentParser(
        description="Tokenize a corpus with a SentencePiece model or a Hugging Face "
                    "tokenizer.json into a dataset directory "
                    "(meta.json + memory-mappable shards, see docs/data_format.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--corpus_path", required=True,
                        help="Input corpus. lm: a .txt file of one document per line, or .jsonl "
                             "with a \"text\" field per line (or a .json array of such objects). "
                             "alpaca: a .json array or .jsonl of {\"instruction\", \"input\", \"output\"}.")
    add_tokenizer_options(
        parser, spm_help="SentencePiece model (e.g. LLaMA's tokenizer.model); bos/eos/unk/pad "
                         "ids are read from it (pad falls back to unk when it has none).",
        hf_help="Hugging Face tokenizer.json, or a folder holding one (e.g. LLaMA-3's, "
                "Qwen2.5's); bos/eos/pad and whether a bos is added come from it and the "
                "tokenizer_config.json beside it (docs/tokenizers.md).")
    parser.add_argument("--dataset_path", required=True,
                        help="Output directory; written beside and renamed into place when complete, "
                             "replacing an older dataset there.")
    parser.add_argument("--data_processor", default="lm", choices=list(PROCESSORS),
                        help="lm (alias llm_pretrain): documents packed back to back and cut into "
                             "samples of seq_length + 1 tokens. alpaca (alias llm_sft): one "
                             "instruction example per sample, prompt length stored for "
                             "--prefix_lm_loss. conversation: multi-turn ShareGPT / OpenAI "
                             "messages (or alpaca) records rendered by --chat_template, with a "
                             "per-token loss mask (assistant turns) for --prefix_lm_loss.")
    parser.add_argument("--packing", action="store_true",
                        help="alpaca: pack several whole examples into each sample (first-fit "
                             "decreasing within blocks of examples; none is split); training "
                             "then keeps every example to its own attention, positions and loss.")
    parser.add_argument("--chat_template", default=None, choices=list(TEMPLATE_NAMES),
                        help="conversation: how turns become text (docs/chat.md); default alpaca. "
                             "tokenizer: the Jinja chat_template of the --tokenizer_path folder.")
    parser.add_argument("--train_on_prompt", action="store_true",
                        help="conversation: train on every token, not only the assistant turns.")
    parser.add_argument("--mask_history", action="store_true",
                        help="conversation: train only the last assistant turn.")
    parser.add_argument("--seq_length", type=int, default=512,
                        help="Tokens the model reads per sample; samples hold seq_length + 1 "
                             "tokens (inputs and shifted labels). At least 2.")
    parser.add_argument("--processes_num", type=int, default=1,
                        help="Worker processes, each tokenizing a byte range of the corpus; the "
                             "output is identical whatever the number (a .json array uses one).")
    parser.add_argument("--seed", type=int, default=7,
                        help="Recorded in meta.json only: preprocessing never shuffles, training "
                             "shuffles per epoch from its own seed.")
    parser.add_argument("--prompt_template", default=None,
                        help="alpaca only: JSON file {\"prompt_input\": \"...{instruction}...{input}...\", "
                             "\"prompt_no_input\": \"...{instruction}...\"} replacing the default "
                             "Alpaca template (see tencentpretrain/prompts.py).")
    parser.add_argument("--noise_density", type=float, default=None,
                        help="t5: fraction of tokens masked by span corruption (default 0.15).")
    parser.add_argument("--mean_noise_span_length", type=float, default=None,
                        help="t5: mean length of a masked span (default 3).")
    parser.add_argument("--tgt_seq_length", type=int, default=None,
                        help="seq2seq: target tokens kept per pair, eos included (default: "
                             "--seq_length, which bounds the source).")
    parser.add_argument("--too_long", choices=["truncate", "skip"], default=None,
                        help="seq2seq: a source or target over its length is truncated (default, "
                             "eos kept last) or the pair skipped; both counted in the summary.")
    parser.add_argument("--shard_tokens", type=int, default=SHARD_TOKENS,
                        help="Start a new shard once a shard would exceed this many tokens.")
    parser.add_argument("--no_progress", action="store_true",
                        help="Do not show the progress bar (bytes of the corpus done).")
    return parser


# options only one processor takes -> that processor
PROCESSOR_OPTIONS = {"noise_density": "t5", "mean_noise_span_length": "t5",
                     "tgt_seq_length": "seq2seq", "too_long": "seq2seq"}


def span_options(args):
    """The options of t5 (span corruption) or seq2seq (None for other processors); an option
    given to a processor that does not take it is refused."""
    name = PROCESSORS.get(args.data_processor)
    given = {k: getattr(args, k) for k in PROCESSOR_OPTIONS if getattr(args, k) is not None}
    for key in given:
        if PROCESSOR_OPTIONS[key] != name:
            raise DatasetError(f"--{key} applies to --data_processor {PROCESSOR_OPTIONS[key]} only")
    return given if name in PROCESSOR_OPTIONS.values() else None


def main(argv=None):
    args = build_parser().parse_args(argv)
    # let `kill` unwind like Ctrl-C, so the staging directory and the workers are cleaned up
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    summary = run(lambda: preprocess(
        args.corpus_path, args.spm_model_path, args.dataset_path,
        data_processor=args.data_processor, seq_length=args.seq_length,
        processes_num=args.processes_num, seed=args.seed, prompt_template=args.prompt_template,
        shard_tokens=args.shard_tokens, progress=not args.no_progress, packing=args.packing,
        tokenizer_path=args.tokenizer_path, chat_template=args.chat_template,
        train_on_prompt=args.train_on_prompt, mask_history=args.mask_history,
        processor_options=span_options(args)),
        interrupted="interrupted; no dataset was written")  # exits 2 / 130 after one line
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
