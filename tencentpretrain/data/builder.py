"""Corpus -> token dataset (docs/data_format.md), in parallel over byte ranges, memory-flat.

The machinery every processor (processors/, one file each) shares:

1. The corpus is split into `processes_num` byte ranges aligned to line starts (a JSON array
   file is a single range). Each worker process streams its range into its processor's
   `add_text` / `add_record`, which tokenizes batches of about 1 MiB of text with one
   tokenizer call and appends to its own part files in the staging directory.
2. The main process hands the parts, in corpus order, to the processor's `assemble`, which
   cuts them into shards; it sees the same stream whatever processes_num is.
3. meta.json is written last, in a staging directory beside the target that is renamed into
   place; any failure removes the staging directory, so no partial dataset ever loads.
"""
import contextlib
import multiprocessing as mp
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass

from tqdm import tqdm

from tencentpretrain.chat_templates import ChatTemplateError
from tencentpretrain.prompts import PromptTemplate, TemplateError
from tencentpretrain.tokenizer import TokenizerError, load_tokenizer
from tencentpretrain.data import corpus
from tencentpretrain.data.corpus import (BLOCK_BYTES, JSON_ARRAY, TEXT, LineError, corpus_kind,
                                         decode, iter_json_array, iter_line_pieces,
                                         line_aligned_ranges, parse_object)
from tencentpretrain.data.format import (FORMAT_NAME, FORMAT_VERSION, META_FILE,
                                         PACKED_FORMAT_VERSION, SHARD_TOKENS, CorpusError,
                                         DatasetError, ShardWriter, token_dtype, write_meta)
from tencentpretrain.data.processors import check_options, get_processor
from tencentpretrain.data.processors.base import FIRST_PAIR_TOO_LONG, PROMPT_TOO_LONG


@dataclass
class Task:
    """One worker's job: a byte range of the corpus and where to write its part files."""
    index: int
    corpus_path: str
    kind: str
    start: int
    end: int
    processor: type  # a class of processors.str2processor
    seq_length: int
    spm_model_path: str  # the tokenizer: one of these two is set (tokenizer.py)
    tokenizer_path: str
    dtype: str
    template: PromptTemplate  # None for processors without prompts
    packing: bool
    prefix: str  # part files: prefix + the processor's extensions


def _records(f, task, report, skipped):
    """(lineno, dict) of a JSON array or JSONL range; blank and oversized lines are counted."""
    if task.kind == JSON_ARRAY:
        yield from iter_json_array(f, report)
        return
    for lineno, piece, offset, last in iter_line_pieces(f, task.start, task.end, corpus.MAX_RECORD_BYTES, report):
        if offset or not last:  # a line longer than MAX_RECORD_BYTES, seen piece by piece
            if last:
                skipped["JSON line too long"] += 1
            continue
        if not piece.strip():
            skipped["blank line"] += 1
            continue
        yield lineno, parse_object(decode(piece, lineno), lineno)


def lines_before(path, position):
    """Number of newlines before a byte position (to report lines within the whole file)."""
    count = 0
    with open(path, "rb") as f:
        while f.tell() < position:
            count += f.read(min(BLOCK_BYTES, position - f.tell())).count(b"\n")
    return count


def tokenize_range(task, report):
    """Worker body: stream one byte range into its part files; returns its counts."""
    tokenizer = load_tokenizer(task.spm_model_path, task.tokenizer_path)
    parts = task.processor(task, tokenizer)
    try:
        with open(task.corpus_path, "rb") as f:
            if task.kind == TEXT:
                for lineno, piece, offset, last in iter_line_pieces(f, task.start, task.end, corpus.PIECE_BYTES, report):
                    parts.add_text(decode(piece, lineno, offset).strip(), last)
            else:
                for index, (lineno, record) in enumerate(_records(f, task, report, parts.skipped), 1):
                    try:
                        parts.add_record(lineno, record)
                    except LineError as e:
                        raise e.in_example(index) if task.kind == JSON_ARRAY else e from None
        return parts.finish()
    except LineError as e:
        lineno = lines_before(task.corpus_path, task.start) + e.lineno
        raise CorpusError(f"{task.corpus_path}:{lineno}: {e.problem}") from None
    finally:
        for file in parts.files.values():
            file.close()


def _worker_main(task, progress, conn):
    """Process entry: run the task, send back ("ok", counts) or (error class name, message)."""
    def report(n):
        progress[task.index] += n

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the parent stops workers with SIGTERM
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent
    try:
        conn.send(("ok", tokenize_range(task, report)))
    except (DatasetError, TokenizerError, TemplateError, ChatTemplateError) as e:
        conn.send((type(e).__name__, str(e)))
    except BaseException:
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


_ERRORS = {cls.__name__: cls for cls in (CorpusError, DatasetError, TokenizerError, TemplateError,
                                         ChatTemplateError)}


def _progress_bar(total, enabled):
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="tokenizing",
                file=sys.stderr, disable=not enabled, dynamic_ncols=True)


def run_tasks(tasks, total_bytes, progress=True):
    """Run the tasks (in-process for one, else one forked process each); counts in order.

    On failure, the error of the earliest range in the corpus is raised and all workers stop.
    """
    if len(tasks) == 1:
        with _progress_bar(total_bytes, progress) as bar:
            return [tokenize_range(tasks[0], bar.update)]
    ctx = mp.get_context("fork")
    done = ctx.RawArray("q", len(tasks))
    processes, pipes = [], []
    try:
        for task in tasks:  # started before tqdm starts its monitor thread
            receiver, sender = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_worker_main, args=(task, done, sender), daemon=True)
            process.start()
            sender.close()
            processes.append(process)
            pipes.append(receiver)
        results, failed = {}, None
        with _progress_bar(total_bytes, progress) as bar:
            while True:
                waiting = [k for k in range(len(tasks)) if k not in results
                           and (failed is None or k < failed[0])]
                if not waiting:
                    break
                mp.connection.wait([pipes[k] for k in waiting], timeout=0.2)
                for k in waiting:
                    if not pipes[k].poll():
                        continue
                    try:
                        status, payload = pipes[k].recv()
                    except EOFError:
                        processes[k].join()
                        status, payload = "crash", f"exit code {processes[k].exitcode}"
                    if status == "ok":
                        results[k] = payload
                    elif failed is None or k < failed[0]:
                        failed = (k, status, payload)
                bar.update(sum(done) - bar.n)
        if failed:
            k, status, message = failed
            raise _ERRORS.get(status, RuntimeError)(
                message if status in _ERRORS else f"worker {k} failed: {message}")
        return [results[k] for k in range(len(tasks))]
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()


def _check_replaceable(target, given):
    """Only a missing path, an empty directory or a dataset directory may be (re)written."""
    if not os.path.lexists(target):
        return
    if not os.path.isdir(target) or (os.listdir(target) and
                                     not os.path.isfile(os.path.join(target, META_FILE))):
        raise DatasetError(f"--dataset_path {given}: exists and is not a dataset directory "
                           f"(no {META_FILE}); refusing to replace it")


@contextlib.contextmanager
def _staging(dataset_path):
    """A temporary directory beside the target (same file system, so the final rename is
    atomic), removed on any failure."""
    target = os.path.abspath(dataset_path)
    _check_replaceable(target, dataset_path)
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=os.path.basename(target) + ".tmp-", dir=os.path.dirname(target))
    except OSError as e:
        raise DatasetError(f"--dataset_path {dataset_path}: cannot write there ({e.strerror})") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp makes it private; a dataset is an ordinary dir
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _install(staging, dataset_path):
    """Rename the finished staging directory onto the target, replacing an older dataset."""
    target = os.path.abspath(dataset_path)
    _check_replaceable(target, dataset_path)
    if not os.path.lexists(target):
        os.rename(staging, target)
        return
    old = staging + ".old"
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old)


def _check_corpus(path):
    if not os.path.isfile(path):
        raise CorpusError(f"--corpus_path {path}: no such file")
    if os.path.getsize(path) == 0:
        raise CorpusError(f"{path}: empty corpus")


def preprocess(corpus_path, spm_model_path, dataset_path, data_processor="lm", seq_length=512,
               processes_num=1, seed=7, prompt_template=None, shard_tokens=SHARD_TOKENS,
               progress=True, packing=False, tokenizer_path=None, chat_template=None,
               train_on_prompt=False, mask_history=False, processor_options=None):
    """Tokenize `corpus_path` into the dataset directory `dataset_path`; returns a summary dict.

    Raises DatasetError / CorpusError / TokenizerError / TemplateError with one-line messages.
    `seed` is only recorded: preprocessing never shuffles (training shuffles per epoch).
    `packing` (alpaca): several whole examples per sample, see packing.py.
    The tokenizer is `spm_model_path` (SentencePiece) or `tokenizer_path` (a Hugging Face
    tokenizer.json or its folder); pass None for the other.
    `chat_template`, `train_on_prompt`, `mask_history`: conversation only (chat_templates.py).
    `processor_options`: a dict of options only one processor takes (t5: noise_density, ...).
    """
    started = time.perf_counter()
    processor = get_processor(data_processor)
    if seq_length < 2:
        raise DatasetError(f"--seq_length must be at least 2, got {seq_length}")
    if processes_num < 1:
        raise DatasetError(f"--processes_num must be at least 1, got {processes_num}")
    if shard_tokens < 1:
        raise DatasetError(f"--shard_tokens must be at least 1, got {shard_tokens}")
    tokenizer = load_tokenizer(spm_model_path, tokenizer_path)
    kind = corpus_kind(corpus_path)
    _check_corpus(corpus_path)
    processor.check_corpus(corpus_path, kind)
    check_options(processor, prompt_template, packing, chat_template, train_on_prompt, mask_history)
    template = processor.template(prompt_template, chat_template=chat_template, tokenizer=tokenizer,
                                  train_on_prompt=train_on_prompt, mask_history=mask_history,
                                  **({"seed": seed, **processor_options} if processor_options is not None else {}))
    dtype = token_dtype(tokenizer.vocab_size)
    corpus_bytes = os.path.getsize(corpus_path)
    ranges = ([(0, corpus_bytes)] if kind == JSON_ARRAY
              else line_aligned_ranges(corpus_path, processes_num))

    with _staging(dataset_path) as staging:
        os.mkdir(os.path.join(staging, "parts"))
        tasks = [Task(k, corpus_path, kind, start, end, processor, seq_length, spm_model_path,
                      tokenizer_path, dtype, template, packing,
                      os.path.join(staging, "parts", f"part_{k:05d}"))
                 for k, (start, end) in enumerate(ranges)]
        counts = run_tasks(tasks, corpus_bytes, progress)
        skipped = sum((Counter(c["skipped"]) for c in counts), Counter())
        documents = sum(c["documents"] for c in counts)
        seq_length_to_keep = max(c["seq_length_to_keep"] for c in counts)
        if documents == 0:
            reasons = skip_reasons(skipped, seq_length_to_keep, "{n} {why}") or "nothing"
            raise CorpusError(f"{corpus_path}: empty corpus (no usable "
                              f"{processor.noun[:-1]}; skipped: {reasons})")
        holds = processor.holds(packing)
        writer = ShardWriter(staging, dtype, holds["prompt_lengths"], shard_tokens, holds["packed"],
                             holds["loss_mask"])
        shards = processor.assemble([task.prefix for task in tasks], writer, tasks[0], staging)
        shutil.rmtree(os.path.join(staging, "parts"))
        for shard in shards:
            del shard["start"]
        meta = {
            "format": FORMAT_NAME,
            "format_version": PACKED_FORMAT_VERSION if packing else FORMAT_VERSION,
            "data_processor": processor.name,
            "seq_length": seq_length,
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype,
            "bos_id": tokenizer.bos_id,
            "add_bos": tokenizer.add_bos,
            "eos_id": tokenizer.eos_id,
            "pad_id": tokenizer.pad_id,
            "unk_id": tokenizer.unk_id,
            "tokenizer_sha256": tokenizer.sha256,
            "tokenizer_file": os.path.basename(tokenizer.path),
            "corpus_file": os.path.basename(corpus_path),
            "seed": seed,
            "num_samples": sum(s["num_samples"] for s in shards),
            "num_tokens": sum(s["num_tokens"] for s in shards),
            "num_documents": documents,
            "skipped": dict(sorted(skipped.items())),
            "truncated": sum(c["truncated"] for c in counts),
            "prompt_template": template.to_dict() if template else None,
            "holds": holds,  # what readers open (format.Holds), whatever the processor
            "shards": shards,
        }
        if packing:
            meta["packed"] = True
        if processor.with_mask:  # conversation: the template and loss options it was made with
            meta["chat_template"] = meta.pop("prompt_template")
            meta["dropped_pairs"] = sum(c["dropped_pairs"] for c in counts)
        write_meta(staging, meta)
        _install(staging, dataset_path)

    seconds = time.perf_counter() - started
    return {"dataset_path": dataset_path, "corpus_path": corpus_path, "data_processor": processor.name,
            "noun": processor.noun, "with_prompts": processor.with_prompts, "packed": packing,
            "corpus_bytes": corpus_bytes, "documents": documents,
            "read": documents + sum(skipped.values()), "seq_length_to_keep": seq_length_to_keep,
            "notes": _notes(dataset_path, kind, processes_num),
            "samples": meta["num_samples"], "tokens": meta["num_tokens"],
            "fill": meta["num_tokens"] / (meta["num_samples"] * (seq_length + 1)),
            "shards": len(shards), "skipped": meta["skipped"], "truncated": meta["truncated"],
            "processes": len(tasks), "seconds": seconds,
            "skipped_at": _skipped_at(counts), "dropped_pairs": meta.get("dropped_pairs"),
            "tokens_per_s": meta["num_tokens"] / seconds, "mb_per_s": corpus_bytes / 1e6 / seconds}


def _skipped_at(counts, shown=3):
    """Per skip reason, the first record line numbers (conversation), in corpus order."""
    at = {}
    for c in counts:
        for why, lines in c.get("skipped_at", {}).items():
            at.setdefault(why, []).extend(lines)
    return {why: lines[:shown] for why, lines in at.items()}


def _notes(dataset_path, kind, processes_num):
    """What the user may not expect from the options given (printed as `note:` lines)."""
    notes = []
    if kind == JSON_ARRAY and processes_num > 1:
        notes.append(f"--processes_num {processes_num}: a .json array is read by one process; "
                     "JSON lines (.jsonl) are split across processes")
    if dataset_path.rstrip(os.sep).endswith(".pt"):
        notes.append(f"--dataset_path {dataset_path} is a folder (meta.json + shards), not a "
                     "TencentPretrain .pt file; give pretrain.py the same path")
    return notes


def skip_reasons(skipped, seq_length_to_keep, form="{n:,} {why}"):
    """"N reason, ..." of the skipped units; a length skip says the --seq_length that fits."""
    reasons = []
    for why, n in sorted(skipped.items()):
        reason = form.format(n=n, why=why)
        if why in (PROMPT_TOO_LONG, FIRST_PAIR_TOO_LONG) and seq_length_to_keep:
            reason += f" (--seq_length {seq_length_to_keep} or more would keep them)"
        reasons.append(reason)
    return ", ".join(reasons)


def format_summary(summary):
    """The end-of-run summary block printed by preprocess.py."""
    skipped = skip_reasons(summary["skipped"], summary["seq_length_to_keep"]) or "none"
    lines = [
        f"dataset    {summary['dataset_path']} ({summary['shards']} shard(s))",
        f"corpus     {summary['corpus_path']} ({summary['corpus_bytes'] / 1e6:,.1f} MB)",
        f"{summary['noun']:<10} {summary['read']:,} read, {summary['documents']:,} kept, "
        f"{summary['read'] - summary['documents']:,} skipped",
        f"samples    {summary['samples']:,}",
        f"tokens     {summary['tokens']:,}",
        f"skipped    {skipped}",
    ]
    for why, at in (summary.get("skipped_at") or {}).items():
        lines.append(f"  {why}: line(s) {', '.join(map(str, at))}"
                     f"{' ...' if summary['skipped'].get(why, 0) > len(at) else ''}")
    if summary.get("dropped_pairs") is not None:
        lines.append(f"truncated  {summary['truncated']:,} conversations kept their first pairs "
                     f"({summary['dropped_pairs']:,} later pairs dropped to fit seq_length)")
    if summary["data_processor"] == "seq2seq":
        lines.append(f"truncated  {summary['truncated']:,} pairs cut to fit --seq_length (source) "
                     "/ --tgt_seq_length (target)")
    if summary["with_prompts"]:
        lines.append(f"truncated  {summary['truncated']:,} answers cut to fit seq_length")
        how = "packed" if summary["packed"] else "one example per sample"
        lines.append(f"fill       {summary['fill']:.1%} of seq_length + 1 tokens per sample ({how})")
    lines.append(f"speed      {summary['tokens_per_s']:,.0f} tokens/s, {summary['mb_per_s']:,.1f} MB/s "
                 f"({summary['seconds']:.2f} s, {summary['processes']} process(es))")
    lines += [f"note: {note}" for note in summary["notes"]]
    return "\n".join(lines)
