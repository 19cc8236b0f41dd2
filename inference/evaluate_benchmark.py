"""Multiple-choice accuracy on C-Eval, CMMLU or MMLU (k-shot, log-likelihood of each answer
letter), per subject and category; see docs/evaluation.md for the prompts and the scoring."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inference import add_model_options, load_model, make_output_folder, run  # noqa: E402
from tencentpretrain.benchmarks.evaluate import evaluate_benchmark  # noqa: E402
from tencentpretrain.benchmarks.formats import LAYOUTS, BenchmarkError  # noqa: E402
from tencentpretrain.benchmarks.prompts import resolve_template  # noqa: E402
from tencentpretrain.benchmarks.report import format_table, submission, write_json  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_options(parser)
    data = parser.add_argument_group("benchmark")
    data.add_argument("--task", required=True, choices=sorted(LAYOUTS))
    data.add_argument("--data_dir", required=True,
                      help="The benchmark's folder as distributed (dev/, val/, test/).")
    data.add_argument("--split", default=None,
                      help="Split to evaluate (default: val for ceval, test for cmmlu and mmlu).")
    data.add_argument("--n_shot", type=int, default=None,
                      help="Shots from dev/ (default 5; 0 with --prompt_template).")
    data.add_argument("--subjects", default=None, help="Comma-separated subjects (default all).")
    data.add_argument("--prompt_template", default=None,
                      help='Instruction-tuned models: wrap each 0-shot question in "alpaca" or '
                           "a template JSON file, as generate_lm.py does.")
    data.add_argument("--max_seq_length", type=int, default=None,
                      help="Longest prompt + answer (default: the config's max_seq_length); "
                           "longer prompts drop their longest shots.")
    data.add_argument("--batch_size", type=int, default=8, help="Rows per forward pass.")
    out = parser.add_argument_group("output")
    out.add_argument("--result_path", required=True,
                     help="JSON: settings, accuracies, every question's prediction and scores.")
    out.add_argument("--submission_path", default=None,
                     help="A split without answers (C-Eval test): predictions as "
                          "{subject: {id: letter}} (default: RESULT_PATH with "
                          ".submission.json).")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    template = resolve_template(args.prompt_template)
    make_output_folder(args.result_path, "--result_path", BenchmarkError)
    model, tokenizer = load_model(args)
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()] if args.subjects else None
    summary, results = evaluate_benchmark(
        model, tokenizer, args.task, args.data_dir, args.split, args.n_shot, subjects,
        args.batch_size, args.max_seq_length, template, progress=True)
    summary["settings"]["model"] = args.load_model_path
    write_json(args.result_path, summary)
    print(format_table(summary))
    print(f"wrote {args.result_path}", file=sys.stderr)
    if not summary["settings"]["answers"]:
        path = args.submission_path or os.path.splitext(args.result_path)[0] + ".submission.json"
        write_json(path, submission(results))
        print(f"wrote {path} (no answers in --split {summary['settings']['split']}: "
              f"predictions for submission)", file=sys.stderr)


if __name__ == "__main__":
    run(main)
