"""Continue each prompt of a file (one per line; or a .jsonl file of {"instruction", "input"}
or {"prompt"} records), or chat in the terminal (--interactive).

Each output line is the continuation of the prompt on the same input line: only the new
tokens, with "\\" written as "\\\\" and newlines as "\\n" (see docs/inference.md).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inference import (add_model_options, add_sampling_options, load_model,  # noqa: E402
                       make_output_folder, run)
from inference.text_io import chat, generate_file, interactive  # noqa: E402
from tencentpretrain.chat import ChatSession, load_chat_template  # noqa: E402
from tencentpretrain.chat_templates import TEMPLATE_NAMES  # noqa: E402
from tencentpretrain.generation import GenerationError, SamplingOptions, TextGenerator  # noqa: E402
from tencentpretrain.prompts import ALPACA_TEMPLATE, load_template  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    io = parser.add_argument_group("input and output")
    io.add_argument("--test_path",
                    help="Prompts, one per line (UTF-8). A .jsonl file (or a .json array) holds "
                         'one record per prompt: {"instruction": ..., "input": ...} rendered '
                         "through --prompt_template (default alpaca) as preprocess.py renders "
                         'alpaca examples, or {"prompt": ...} taken like a line of a text file.')
    io.add_argument("--prediction_path", help="Continuations, one per line.")
    io.add_argument("--interactive", action="store_true",
                    help="Read prompts from the terminal and stream the answers.")
    io.add_argument("--prompt_template", default=None,
                    help='Wrap each prompt in an instruction template: "alpaca" (the one '
                         "preprocess.py --data_processor alpaca uses) or a template JSON file. "
                         "For instruction records of a .jsonl --test_path, the template they are "
                         "rendered through (default alpaca).")
    io.add_argument("--chat_template", default=None,
                    help="Render each prompt as a one-user-turn conversation of this chat "
                         "template (alpaca, chatml, llama3, llama2, mistral, or tokenizer: the "
                         "Jinja of the --tokenizer_path folder), as preprocess.py --data_processor "
                         "conversation renders training data, and stop at its end-of-turn token "
                         "as well as eos. With --interactive: a multi-turn chat keeping the "
                         "history within --seq_length (oldest pairs dropped first).")
    io.add_argument("--system_prompt", default=None,
                    help="System prompt of every --chat_template conversation.")
    length = parser.add_argument_group("length")
    length.add_argument("--seq_length", type=int, default=None,
                        help="Limit on prompt + continuation tokens (default: the config's "
                             "max_seq_length).")
    length.add_argument("--max_new_tokens", type=int, default=None,
                        help="Limit on new tokens (default: up to --seq_length).")
    length.add_argument("--batch_size", type=int, default=1,
                        help="Prompts generated together (results equal one at a time).")
    add_sampling_options(parser, top_k_default=70, top_k_help="0: off; 1: greedy.",
                         greedy_flag=True)
    args = parser.parse_args(argv)
    if not args.interactive and not (args.test_path and args.prediction_path):
        parser.error("--test_path and --prediction_path are required unless --interactive")
    if args.chat_template and args.chat_template not in TEMPLATE_NAMES:
        parser.error(f"--chat_template {args.chat_template}: unknown (choose from "
                     f"{', '.join(TEMPLATE_NAMES)})")
    if args.chat_template and args.prompt_template:
        parser.error("--chat_template and --prompt_template: give one")
    if args.system_prompt is not None and not args.chat_template:
        parser.error("--system_prompt needs --chat_template")
    for name in ("seq_length", "max_new_tokens", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer")
    return args


def main(argv=None):
    args = parse_args(argv)
    template = None
    if args.prompt_template:
        template = (ALPACA_TEMPLATE if args.prompt_template == "alpaca"
                    else load_template(args.prompt_template))
    options = SamplingOptions(1 if args.greedy else args.top_k, args.top_p, args.temperature,
                              args.repetition_penalty).check()
    if args.prediction_path:
        make_output_folder(args.prediction_path, "--prediction_path", GenerationError)
    model, tokenizer = load_model(args)
    generator = TextGenerator(model, tokenizer, args.seq_length, args.max_new_tokens, options,
                              template, args.seed)
    session = None
    if args.chat_template:
        session = ChatSession(generator, load_chat_template(args.chat_template, tokenizer),
                              args.system_prompt)
    if args.interactive and session is not None:
        chat(session, sys.stdin, sys.stdout)
    elif args.interactive:
        interactive(generator, sys.stdin, sys.stdout)
    else:
        count = generate_file(generator, args.test_path, args.prediction_path, args.batch_size)
        noun = "continuation" if count == 1 else "continuations"
        print(f"wrote {count} {noun} to {args.prediction_path}", file=sys.stderr)


if __name__ == "__main__":
    run(main)
