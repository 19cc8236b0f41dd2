"""Corpus -> token dataset (docs/data_format.md), in parallel over byte ranges, memory-flat.

1. The corpus is split into `processes_num` byte ranges aligned to line starts (a JSON array
   file is a single range). Each worker process streams its range, tokenizes batches of about
   1 MiB of text with one SentencePiece call and appends to its own part files in the staging
   directory: tokens, lengths (int64: of documents for lm, of samples for alpaca) and, for
   alpaca, prompt lengths.
2. The main process reads the parts in corpus order and cuts them into shards. For lm the
   token stream of all documents is cut into samples of seq_length + 1 tokens (global packing),
   so the samples do not depend on processes_num; for alpaca each example is one sample.
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
from itertools import chain

import numpy as np
from tqdm import tqdm

from ..prompts import ALPACA_TEMPLATE, PromptTemplate, TemplateError, build_prompt, load_template
from ..tokenizer import SpmTokenizer, TokenizerError
from .corpus import (BLOCK_BYTES, JSON_ARRAY, MAX_RECORD_BYTES, PIECE_BYTES, TEXT, LineError,
                     corpus_kind, decode, iter_json_array, iter_line_pieces, line_aligned_ranges,
                     parse_object, split_text)
from .format import (DOC, FORMAT_NAME, FORMAT_VERSION, META_FILE, OFFSET_DTYPE, PROMPT_DTYPE,
                     SHARD_TOKENS, CorpusError, DatasetError, ShardWriter, numpy_dtype,
                     raw_to_npy, token_dtype, write_meta)

PROCESSORS = {"lm": "lm", "llm_pretrain": "lm", "alpaca": "alpaca", "llm_sft": "alpaca"}
BATCH_CHARS = 1 << 20  # text per SentencePiece call: bounds the Python id lists (tens of MB)
COPY_ITEMS = 1 << 22  # tokens / offsets per step when the main process assembles shards
JSON_TYPES = {dict: "an object", list: "an array", int: "a number", float: "a number",
              bool: "a boolean", type(None): "null"}


def canonical_processor(name):
    """lm / alpaca, also accepting TencentPretrain's llm_pretrain / llm_sft."""
    if name not in PROCESSORS:
        raise DatasetError(f"--data_processor {name}: unknown (choose from {', '.join(PROCESSORS)})")
    return PROCESSORS[name]


@dataclass
class Task:
    """One worker's job: a byte range of the corpus and where to write its part files."""
    index: int
    corpus_path: str
    kind: str
    start: int
    end: int
    processor: str
    seq_length: int
    spm_model_path: str
    dtype: str
    template: PromptTemplate
    prefix: str  # part files: prefix + ".tokens", ".lengths", ".prompts"


def text_field(record, key, lineno, optional=False):
    value = record.get(key)
    if optional and value is None:
        return ""
    if key not in record:
        raise LineError(lineno, f'missing "{key}"')
    if not isinstance(value, str):
        raise LineError(lineno, f'"{key}" is {JSON_TYPES.get(type(value), "not text")}, not a string')
    return value


class _Parts:
    """A worker's output: part files appended one tokenized batch at a time, plus counts."""
    extensions = ()

    def __init__(self, task, tokenizer):
        self.task, self.tokenizer = task, tokenizer
        self.dtype = numpy_dtype(task.dtype)
        self.files = {ext: open(task.prefix + ext, "wb") for ext in self.extensions}
        self.documents, self.tokens, self.truncated, self.chars = 0, 0, 0, 0
        self.skipped = Counter()

    def write(self, ext, array):
        self.files[ext].write(array.tobytes())

    def finish(self):
        self.flush()
        for f in self.files.values():
            f.close()
        return {"documents": self.documents, "tokens": self.tokens,
                "truncated": self.truncated, "skipped": dict(self.skipped)}

    def flush(self):
        raise NotImplementedError


class _LmParts(_Parts):
    """Documents as [bos] + ids + [eos] back to back, and their lengths.

    A document arrives in one or more text pieces (long ones are cut, see corpus.py); the
    batch keeps, per piece, whether it opens (bos) or closes (eos) its document.
    """
    extensions = (".tokens", ".lengths")

    def __init__(self, task, tokenizer):
        super().__init__(task, tokenizer)
        self.texts, self.opens, self.closes = [], [], []
        self.in_document = False
        self.open_length = 0  # tokens already written for the document still open

    def add_text(self, text, last):
        """A stripped piece of a document; `last`: the document ends with it."""
        if text or (last and self.in_document):
            self.texts.append(text)
            self.opens.append(not self.in_document)
            self.closes.append(last)
            self.in_document = not last
            self.chars += len(text)
            if self.chars >= BATCH_CHARS:
                self.flush()
        elif last:
            self.skipped["empty document"] += 1

    def add_record(self, lineno, record):
        pieces = list(split_text(text_field(record, "text", lineno).strip(), PIECE_BYTES))
        for i, piece in enumerate(pieces):
            self.add_text(piece.strip(), i == len(pieces) - 1)

    def flush(self):
        if not self.texts:
            return
        ids = self.tokenizer.encode_batch(self.texts)
        bos, eos = (self.tokenizer.bos_id,), (self.tokenizer.eos_id,)

        def with_specials():
            for piece_ids, opens, closes in zip(ids, self.opens, self.closes):
                if opens:
                    yield bos
                yield piece_ids
                if closes:
                    yield eos

        sizes = np.fromiter(map(len, ids), np.int64, len(ids))
        sizes += np.array(self.opens, np.int64) + np.array(self.closes, np.int64)
        ends = np.cumsum(sizes)
        self.write(".tokens", np.fromiter(chain.from_iterable(with_specials()), self.dtype, ends[-1]))
        document_ends = ends[np.array(self.closes)]
        if document_ends.size:
            self.write(".lengths", np.diff(document_ends, prepend=-self.open_length).astype(OFFSET_DTYPE))
            self.open_length = int(ends[-1] - document_ends[-1])
        else:
            self.open_length += int(ends[-1])
        self.documents += document_ends.size
        self.tokens += int(ends[-1])
        self.texts, self.opens, self.closes, self.chars = [], [], [], 0


class _AlpacaParts(_Parts):
    """Samples [bos] + prompt + answer + [eos] cut to seq_length + 1, their lengths and prompt
    lengths (bos included). An example whose prompt leaves no room for one answer token is
    skipped; a longer answer is truncated (its eos then falls off too)."""
    extensions = (".tokens", ".lengths", ".prompts")

    def __init__(self, task, tokenizer):
        super().__init__(task, tokenizer)
        self.prompts, self.answers = [], []

    def add_record(self, lineno, record):
        instruction = text_field(record, "instruction", lineno)
        input_text = text_field(record, "input", lineno, optional=True)
        answer = text_field(record, "output", lineno)
        self.prompts.append(build_prompt(instruction, input_text, self.task.template))
        self.answers.append(answer)
        self.chars += len(self.prompts[-1]) + len(answer)
        if self.chars >= BATCH_CHARS:
            self.flush()

    def flush(self):
        if not self.prompts:
            return
        ids = self.tokenizer.encode_batch(self.prompts + self.answers)
        bos, eos, limit = self.tokenizer.bos_id, self.tokenizer.eos_id, self.task.seq_length + 1
        samples, prompt_lengths = [], []
        for prompt, answer in zip(ids[:len(self.prompts)], ids[len(self.prompts):]):
            if 1 + len(prompt) >= limit:
                self.skipped["prompt too long for seq_length"] += 1
                continue
            sample = [bos] + prompt + answer + [eos]
            if len(sample) > limit:
                self.truncated += 1
                del sample[limit:]
            samples.append(sample)
            prompt_lengths.append(1 + len(prompt))
        lengths = np.fromiter(map(len, samples), OFFSET_DTYPE, len(samples))
        self.write(".tokens", np.fromiter(chain.from_iterable(samples), self.dtype, lengths.sum()))
        self.write(".lengths", lengths)
        self.write(".prompts", np.array(prompt_lengths, PROMPT_DTYPE))
        self.documents += len(samples)
        self.tokens += int(lengths.sum())
        self.prompts, self.answers, self.chars = [], [], 0


def _records(f, task, report, skipped):
    """(lineno, dict) of a JSON array or JSONL range; blank and oversized lines are counted."""
    if task.kind == JSON_ARRAY:
        yield from iter_json_array(f, report)
        return
    for lineno, piece, offset, last in iter_line_pieces(f, task.start, task.end, MAX_RECORD_BYTES, report):
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
    tokenizer = SpmTokenizer(task.spm_model_path)
    parts = (_LmParts if task.processor == "lm" else _AlpacaParts)(task, tokenizer)
    try:
        with open(task.corpus_path, "rb") as f:
            if task.kind == TEXT:
                for lineno, piece, offset, last in iter_line_pieces(f, task.start, task.end, PIECE_BYTES, report):
                    parts.add_text(decode(piece, lineno, offset).strip(), last)
            else:
                for lineno, record in _records(f, task, report, parts.skipped):
                    parts.add_record(lineno, record)
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
    except (DatasetError, TokenizerError, TemplateError) as e:
        conn.send((type(e).__name__, str(e)))
    except BaseException:
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


_ERRORS = {cls.__name__: cls for cls in (CorpusError, DatasetError, TokenizerError, TemplateError)}


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


class ConcatReader:
    """Reads given numbers of items from the concatenation of raw array files."""

    def __init__(self, paths, dtype):
        self.paths, self.dtype, self.file = iter(paths), dtype, None

    def read(self, count):
        chunks = []
        while count > 0:
            if self.file is None:
                path = next(self.paths, None)
                if path is None:
                    break
                self.file = open(path, "rb")
            chunk = np.fromfile(self.file, self.dtype, count)
            if chunk.size < count:
                self.file.close()
                self.file = None
            chunks.append(chunk)
            count -= chunk.size
        return np.concatenate(chunks) if chunks else np.empty(0, self.dtype)


def _iter_raw(path, dtype, count=COPY_ITEMS):
    with open(path, "rb") as f:
        while (chunk := np.fromfile(f, dtype, count)).size:
            yield chunk


def assemble_lm(prefixes, writer, seq_length, staging):
    """Cut the documents of all parts, back to back, into samples of seq_length + 1 tokens
    (the last one shorter) and give each shard its document starts."""
    size = seq_length + 1
    tokens = ConcatReader([p + ".tokens" for p in prefixes], writer.dtype)
    while (block := tokens.read(max(1, COPY_ITEMS // size) * size)).size:
        lengths = np.full(-(-block.size // size), size, np.int64)
        lengths[-1] = block.size - size * (len(lengths) - 1)
        writer.add(block, lengths)
    shards = writer.close()

    starts_path = os.path.join(staging, "parts", "document_starts")
    with open(starts_path, "wb") as out:
        position = 0
        for lengths in chain.from_iterable(_iter_raw(p + ".lengths", OFFSET_DTYPE) for p in prefixes):
            ends = position + np.cumsum(lengths)
            out.write((ends - lengths).tobytes())
            position = int(ends[-1])
    starts = np.memmap(starts_path, OFFSET_DTYPE, mode="r")
    for shard in shards:
        first, stop = np.searchsorted(starts, [shard["start"], shard["start"] + shard["num_tokens"]])
        raw = os.path.join(staging, shard["name"] + DOC + ".raw")
        with open(raw, "wb") as out:
            for a in range(first, stop, COPY_ITEMS):
                out.write((starts[a:min(stop, a + COPY_ITEMS)] - shard["start"]).astype(OFFSET_DTYPE).tobytes())
        raw_to_npy(raw, os.path.join(staging, shard["name"] + DOC), OFFSET_DTYPE)
        shard["num_doc_starts"] = int(stop - first)
    del starts
    return shards


def assemble_alpaca(prefixes, writer):
    """Copy the samples of all parts, in order, into shards."""
    tokens = ConcatReader([p + ".tokens" for p in prefixes], writer.dtype)
    for prefix in prefixes:
        prompts = _iter_raw(prefix + ".prompts", PROMPT_DTYPE)
        for lengths in _iter_raw(prefix + ".lengths", OFFSET_DTYPE):
            writer.add(tokens.read(int(lengths.sum())), lengths, next(prompts))
    return writer.close()


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


def _check_corpus(path, processor, kind):
    if not os.path.isfile(path):
        raise CorpusError(f"--corpus_path {path}: no such file")
    if os.path.getsize(path) == 0:
        raise CorpusError(f"{path}: empty corpus")
    if processor == "alpaca" and kind == TEXT:
        raise CorpusError(f"{path}: --data_processor alpaca reads a JSON array (.json) "
                          f"or JSON lines (.jsonl) file")


def preprocess(corpus_path, spm_model_path, dataset_path, data_processor="lm", seq_length=512,
               processes_num=1, seed=7, prompt_template=None, shard_tokens=SHARD_TOKENS,
               progress=True):
    """Tokenize `corpus_path` into the dataset directory `dataset_path`; returns a summary dict.

    Raises DatasetError / CorpusError / TokenizerError / TemplateError with one-line messages.
    `seed` is only recorded: preprocessing never shuffles (training shuffles per epoch).
    """
    started = time.perf_counter()
    processor = canonical_processor(data_processor)
    if seq_length < 2:
        raise DatasetError(f"--seq_length must be at least 2, got {seq_length}")
    if processes_num < 1:
        raise DatasetError(f"--processes_num must be at least 1, got {processes_num}")
    if shard_tokens < 1:
        raise DatasetError(f"--shard_tokens must be at least 1, got {shard_tokens}")
    tokenizer = SpmTokenizer(spm_model_path)
    kind = corpus_kind(corpus_path)
    _check_corpus(corpus_path, processor, kind)
    if processor == "lm" and prompt_template:
        raise DatasetError("--prompt_template applies to --data_processor alpaca only")
    template = None
    if processor == "alpaca":
        template = load_template(prompt_template) if prompt_template else ALPACA_TEMPLATE
    dtype = token_dtype(tokenizer.vocab_size)
    corpus_bytes = os.path.getsize(corpus_path)
    ranges = ([(0, corpus_bytes)] if kind == JSON_ARRAY
              else line_aligned_ranges(corpus_path, processes_num))

    with _staging(dataset_path) as staging:
        os.mkdir(os.path.join(staging, "parts"))
        tasks = [Task(k, corpus_path, kind, start, end, processor, seq_length, spm_model_path,
                      dtype, template, os.path.join(staging, "parts", f"part_{k:05d}"))
                 for k, (start, end) in enumerate(ranges)]
        counts = run_tasks(tasks, corpus_bytes, progress)
        skipped = sum((Counter(c["skipped"]) for c in counts), Counter())
        documents = sum(c["documents"] for c in counts)
        if documents == 0:
            reasons = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items())) or "nothing"
            raise CorpusError(f"{corpus_path}: empty corpus (no usable "
                              f"{'document' if processor == 'lm' else 'example'}; skipped: {reasons})")
        writer = ShardWriter(staging, dtype, processor == "alpaca", shard_tokens)
        prefixes = [task.prefix for task in tasks]
        if processor == "lm":
            shards = assemble_lm(prefixes, writer, seq_length, staging)
        else:
            shards = assemble_alpaca(prefixes, writer)
        shutil.rmtree(os.path.join(staging, "parts"))
        for shard in shards:
            del shard["start"]
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "data_processor": processor,
            "seq_length": seq_length,
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype,
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "pad_id": tokenizer.pad_id,
            "unk_id": tokenizer.unk_id,
            "tokenizer_sha256": tokenizer.sha256,
            "tokenizer_file": os.path.basename(spm_model_path),
            "corpus_file": os.path.basename(corpus_path),
            "seed": seed,
            "num_samples": sum(s["num_samples"] for s in shards),
            "num_tokens": sum(s["num_tokens"] for s in shards),
            "num_documents": documents,
            "skipped": dict(sorted(skipped.items())),
            "truncated": sum(c["truncated"] for c in counts),
            "prompt_template": template.to_dict() if template else None,
            "shards": shards,
        }
        write_meta(staging, meta)
        _install(staging, dataset_path)

    seconds = time.perf_counter() - started
    return {"dataset_path": dataset_path, "corpus_path": corpus_path, "data_processor": processor,
            "corpus_bytes": corpus_bytes, "documents": documents,
            "samples": meta["num_samples"], "tokens": meta["num_tokens"],
            "shards": len(shards), "skipped": meta["skipped"], "truncated": meta["truncated"],
            "processes": len(tasks), "seconds": seconds,
            "tokens_per_s": meta["num_tokens"] / seconds, "mb_per_s": corpus_bytes / 1e6 / seconds}


def format_summary(summary):
    """The end-of-run summary block printed by preprocess.py."""
    noun = "documents" if summary["data_processor"] == "lm" else "examples"
    skipped = ", ".join(f"{n:,} {why}" for why, n in summary["skipped"].items()) or "none"
    lines = [
        f"dataset    {summary['dataset_path']} ({summary['shards']} shard(s))",
        f"corpus     {summary['corpus_path']} ({summary['corpus_bytes'] / 1e6:,.1f} MB)",
        f"{noun:<10} {summary['documents']:,}",
        f"samples    {summary['samples']:,}",
        f"tokens     {summary['tokens']:,}",
        f"skipped    {skipped}",
    ]
    if summary["data_processor"] == "alpaca":
        lines.append(f"truncated  {summary['truncated']:,} answers cut to fit seq_length")
    lines.append(f"speed      {summary['tokens_per_s']:,.0f} tokens/s, {summary['mb_per_s']:,.1f} MB/s "
                 f"({summary['seconds']:.2f} s, {summary['processes']} process(es))")
    return "\n".join(lines)
