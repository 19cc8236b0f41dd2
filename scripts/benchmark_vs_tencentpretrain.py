"""Our pretrain.py against TencentPretrain's, side by side in one run: same shape, corpus,
tokenizer, batch and steps, one process each, alternating; tokens/s, peak RSS and ratios.

    flock /tmp/heavy.lock python3 scripts/benchmark_vs_tencentpretrain.py --baseline_dir /tmp/tp

--baseline_dir is a TencentPretrain checkout made by ../shared/tools/setup_tencentpretrain_baseline.sh
(its scripts run with PYTHONPATH unset); without it only ours runs. Both sides train the same
work: TencentPretrain's corpus is preprocessed with its --full_sentences, so that, like ours,
every sample is seq_length real tokens of concatenated documents. (By default its lm
processor pads the tail of every line into a sample of its own; on CLUECorpusSmall 46% of its
positions are then padding, which its LM head skips but its tokens/s counts:
--baseline_pads_documents measures that.) tokens/s of a run is the median of its progress
reports after the first (both programs count batch x seq_length per step); tokens/CPU-s is
trained tokens over the process's user + system CPU time, startup included, which other jobs
on shared cores disturb less; each figure is the median over rounds.
Last, a ceiling: the tokens/s at which the step's matmul FLOPs alone would take all the time
at this machine's fp32 matmul peak, measured now on a large square matmul.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")

# The reference shape (TencentPretrain's tiny LLaMA of the setup script), in both formats.
SHAPE = {"emb_size": 256, "hidden_size": 256, "feedforward_size": 688, "heads_num": 4,
         "layers_num": 4, "hidden_act": "silu", "dropout": 0.0, "embedding": ["word"],
         "remove_transformer_bias": True, "remove_embedding_layernorm": True,
         "rotary_position_embedding": True, "encoder": "transformer", "feed_forward": "gated",
         "mask": "causal", "layernorm_positioning": "pre", "layernorm": "rms", "target": ["lm"]}
OURS_REPORT = re.compile(r"step\s+\d+(?:/\d+)? \|.*\| ([\d,]+) tokens/s")
BASELINE_REPORT = re.compile(r"steps\|\s*([\d.]+) tokens/s")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline_dir", default=None,
                        help="TencentPretrain checkout; skipped when absent.")
    parser.add_argument("--corpus_path",
                        default=os.path.join(SHARED_DATA, "CLUECorpusSmall_sampled.txt"))
    parser.add_argument("--corpus_repeats", type=int, default=2)
    parser.add_argument("--spm_model_path",
                        default=os.path.join(SHARED_DATA, "llama_tokenizer.model"))
    parser.add_argument("--seq_length", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--total_steps", type=int, default=30)
    parser.add_argument("--report_steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3, help="Runs of each, alternating.")
    parser.add_argument("--work_dir", default=None, help="Default: a temporary directory.")
    parser.add_argument("--baseline_pads_documents", action="store_true",
                        help="TencentPretrain's default lm data (each line padded on its own) "
                             "instead of --full_sentences; its tokens/s then counts padding.")
    parser.add_argument("--ours_options", default="",
                        help='Extra pretrain.py options for our side only, e.g. "--compile".')
    return parser


def run(cmd, cwd, env, log_path):
    """Run to completion; (exit status, that process's rusage, its output)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return os.waitstatus_to_exitcode(status), usage, f.read()


def checked(name, result, log_path):
    code, usage, output = result
    if code != 0:
        sys.exit(f"error: {name} failed (exit {code}); its output is in {log_path}")
    return usage, output


class Program:
    def __init__(self, name, cwd, env, prepare_cmd, train_cmd, report_pattern):
        self.name, self.cwd, self.env = name, cwd, env
        self.prepare_cmd, self.train_cmd, self.report_pattern = prepare_cmd, train_cmd, report_pattern
        self.tokens_per_s, self.peak_rss, self.tokens_per_cpu_s = [], [], []

    def prepare(self, work):
        log = os.path.join(work, f"{self.name}-preprocess.log")
        checked(f"{self.name} preprocessing", run(self.prepare_cmd, self.cwd, self.env, log), log)

    def measure(self, work, round_index, trained_tokens):
        log = os.path.join(work, f"{self.name}-train-{round_index}.log")
        usage, output = checked(f"{self.name} training", run(self.train_cmd, self.cwd, self.env,
                                                           log), log)
        reports = [float(v.replace(",", "")) for v in self.report_pattern.findall(output)]
        if len(reports) < 2:
            sys.exit(f"error: {self.name} printed {len(reports)} throughput reports; see {log}")
        self.tokens_per_s.append(statistics.median(reports[1:]))
        self.peak_rss.append(usage.ru_maxrss * 1024)
        # CPU time of the whole process (startup included): steadier than wall time when
        # other jobs share the cores
        self.tokens_per_cpu_s.append(trained_tokens / (usage.ru_utime + usage.ru_stime))
        print(f"  round {round_index + 1}: {self.name:<16} {self.tokens_per_s[-1]:>8,.0f} tokens/s"
              f"  {self.tokens_per_cpu_s[-1]:>6,.0f} tokens/CPU-s  peak RSS "
              f"{self.peak_rss[-1] / 2 ** 20:,.0f} MiB", flush=True)


def ours(args, work, corpus):
    dataset, config = os.path.join(work, "ours_dataset"), os.path.join(work, "ours_config.json")
    with open(config, "w") as f:
        json.dump(dict(SHAPE, max_seq_length=args.seq_length), f)
    env = dict(os.environ, PYTHONPATH=ROOT)
    return Program(
        "ours", ROOT, env,
        [sys.executable, "preprocess.py", "--corpus_path", corpus, "--spm_model_path",
         args.spm_model_path, "--dataset_path", dataset, "--data_processor", "lm",
         "--seq_length", str(args.seq_length)],
        [sys.executable, "pretrain.py", "--dataset_path", dataset, "--spm_model_path",
         args.spm_model_path, "--config_path", config, "--output_model_path",
         os.path.join(work, "ours_model", "m"), "--total_steps", str(args.total_steps),
         "--save_checkpoint_steps", str(10 * args.total_steps), "--report_steps",
         str(args.report_steps), "--batch_size", str(args.batch_size), "--data_processor", "lm",
         *args.ours_options.split()],
        OURS_REPORT)


def baseline(args, work, corpus):
    dataset = os.path.join(work, "baseline_dataset.pt")
    config = os.path.join(work, "baseline_config.json")
    with open(config, "w") as f:
        json.dump(dict(SHAPE, max_seq_length=args.seq_length, data_processor="lm"), f)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return Program(
        "TencentPretrain", args.baseline_dir, env,
        [sys.executable, "preprocess.py", "--corpus_path", corpus, "--spm_model_path",
         args.spm_model_path, "--dataset_path", dataset, "--data_processor", "lm",
         "--seq_length", str(args.seq_length), "--processes_num", "2",
         *([] if args.baseline_pads_documents else ["--full_sentences"])],
        [sys.executable, "pretrain.py", "--dataset_path", dataset, "--spm_model_path",
         args.spm_model_path, "--config_path", config, "--output_model_path",
         os.path.join(work, "baseline_model.bin"), "--total_steps", str(args.total_steps),
         "--save_checkpoint_steps", str(10 * args.total_steps), "--report_steps",
         str(args.report_steps), "--batch_size", str(args.batch_size), "--data_processor", "lm"],
        BASELINE_REPORT)


def matmul_ceiling(seq_length):
    """(FLOPs per token of the step's weight matmuls, peak fp32 matmul FLOP/s measured now).

    6 x the parameters in matrices (forward 2, backward 4), the LM head included, attention
    and every elementwise op left out, so the ceiling is an upper bound."""
    import time

    import torch
    sys.path.insert(0, ROOT)
    import tencentpretrain
    from tencentpretrain.config import config_from_dict
    from tencentpretrain.training.metrics import flops_per_token
    with torch.device("meta"):
        model = tencentpretrain.build_model(config_from_dict(dict(SHAPE, max_seq_length=seq_length)),
                                            32000)
    flops = flops_per_token(model, 0)  # seq_length 0: the attention term drops out
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    best = float("inf")
    for _ in range(6):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return flops, 2 * 2048 ** 3 / best


def main():
    args = build_parser().parse_args()
    for path, what in ((args.corpus_path, "--corpus_path"), (args.spm_model_path,
                                                             "--spm_model_path")):
        if not os.path.isfile(path):
            sys.exit(f"error: {what} {path}: no such file")
    work = args.work_dir or tempfile.mkdtemp(prefix="benchmark_vs_tp_")
    os.makedirs(work, exist_ok=True)
    corpus = os.path.join(work, "corpus.txt")
    with open(corpus, "wb") as out:
        for _ in range(args.corpus_repeats):
            with open(args.corpus_path, "rb") as f:
                shutil.copyfileobj(f, out)

    programs = [ours(args, work, corpus)]
    if args.baseline_dir and os.path.isfile(os.path.join(args.baseline_dir, "pretrain.py")):
        programs.append(baseline(args, work, corpus))
    else:
        print(f"TencentPretrain skipped: no pretrain.py in --baseline_dir {args.baseline_dir} "
              "(build one with ../shared/tools/setup_tencentpretrain_baseline.sh)")
    print(f"TencentPretrain data: {'each line padded (tokens/s counts padding)' if args.baseline_pads_documents else '--full_sentences (no padding, as ours)'}")
    print(f"shape: 4 layers, hidden 256, heads 4, ffn 688 | {args.corpus_repeats} x "
          f"{os.path.basename(args.corpus_path)} | batch {args.batch_size} x {args.seq_length}, "
          f"fp32, one process, {args.total_steps} steps | work dir {work}", flush=True)
    for program in programs:
        program.prepare(work)
    for round_index in range(args.rounds):
        for program in programs:
            program.measure(work, round_index, args.total_steps * args.batch_size *
                            args.seq_length)

    print(f"{'median':<16} {'tokens/s':>10} {'tokens/CPU-s':>13} {'peak RSS':>12}")
    for program in programs:
        print(f"{program.name:<16} {statistics.median(program.tokens_per_s):>10,.0f} "
              f"{statistics.median(program.tokens_per_cpu_s):>13,.0f} "
              f"{statistics.median(program.peak_rss) / 2 ** 20:>8,.0f} MiB")
    if len(programs) == 2:
        ours_, base = programs
        def ratio(name):
            return (statistics.median(getattr(ours_, name)) /
                    statistics.median(getattr(base, name)))
        print(f"ratio ours / TencentPretrain: {ratio('tokens_per_s'):.2f}x tokens/s (goal >= "
              f"1.5x), {ratio('tokens_per_cpu_s'):.2f}x tokens/CPU-s, {ratio('peak_rss'):.2f}x "
              "peak RSS (goal <= 0.5x)")
    flops, peak = matmul_ceiling(args.seq_length)
    ceiling = peak / flops
    line = (f"ceiling: {flops / 1e6:.1f} MFLOP of weight matmuls per token; fp32 matmul peak "
            f"now {peak / 1e9:.0f} GFLOP/s (2048^3, best of 6) -> at most {ceiling:,.0f} tokens/s; "
            f"ours reaches {statistics.median(programs[0].tokens_per_s) / ceiling:.0%} of it")
    if len(programs) == 2:
        line += (f", TencentPretrain {statistics.median(programs[1].tokens_per_s) / ceiling:.0%}"
                 f"; 1.5x TencentPretrain would be {1.5 * statistics.median(programs[1].tokens_per_s) / ceiling:.0%}")
    print(line)


if __name__ == "__main__":
    main()
