"""Streaming corpus readers: text lines, JSON lines and JSON arrays, in bounded memory.

Lines are read in blocks, never whole: a line longer than `piece_bytes` comes out in several
pieces, cut after the last space before the limit (else at a UTF-8 character start), so a
single line of hundreds of MB never sits in memory. Errors are `CorpusError`s naming the file
and line, e.g. ``corpus.jsonl:17: broken JSON (Expecting ',' delimiter)`` (in a JSON array also
the example: ``corpus.json:1: example 2: missing "instruction"``): the readers raise
`LineError` (a line counted from where their byte range starts), which the worker turns into
that message.
"""
import codecs
import json
import os

from tencentpretrain.data.format import CorpusError

BLOCK_BYTES = 1 << 20
PIECE_BYTES = 1 << 20  # a longer text document is tokenized in pieces of at most this size
MAX_RECORD_BYTES = 16 << 20  # a longer JSON record is skipped (JSONL) or refused (JSON array)

TEXT, JSONL, JSON_ARRAY = "text", "jsonl", "json"


class LineError(CorpusError):
    """A problem at a line counted from the start of the byte range being read; the worker
    turns it into a CorpusError naming the file and the line within the whole file."""

    def __init__(self, lineno, problem):
        super().__init__(f"line {lineno}: {problem}")
        self.lineno, self.problem = lineno, problem

    def in_example(self, index):
        """The same error naming the example of a JSON array it is about (from 1): several
        examples can share a line, e.g. a whole array written on line 1."""
        return LineError(self.lineno, f"example {index}: {self.problem}")


def corpus_kind(path):
    """The format is chosen by extension: .jsonl = JSON lines, .json = JSON array, else text."""
    ext = os.path.splitext(path)[1].lower()
    return {".jsonl": JSONL, ".json": JSON_ARRAY}.get(ext, TEXT)


def cut_point(buf, limit):
    """Where to cut a too-long document: after the last space/newline before `limit`, else at
    `limit` moved back to a UTF-8 character start (for bytes)."""
    space, newline = (b" ", b"\n") if isinstance(buf, bytes) else (" ", "\n")
    i = max(buf.rfind(space, 0, limit), buf.rfind(newline, 0, limit))
    if i > 0:
        return i + 1
    if isinstance(buf, bytes):
        cut = limit
        while cut > 0 and buf[cut] & 0xC0 == 0x80:
            cut -= 1
        return cut or limit
    return limit


def split_text(text, limit=PIECE_BYTES):
    """Split a long str into pieces of at most `limit` characters at natural cuts."""
    while len(text) > limit:
        cut = cut_point(text, limit)
        yield text[:cut]
        text = text[cut:]
    yield text


def line_aligned_ranges(path, n):
    """Split the file into at most n byte ranges [start, end), each starting at a line start."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as f:
        for k in range(1, n):
            pos = max(bounds[-1], size * k // n)
            bounds.append(next_line_start(f, pos, size))
    bounds.append(size)
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def next_line_start(f, pos, size):
    """The first line start >= pos, scanning in blocks (a huge line is never read whole)."""
    if pos == 0:
        return 0
    f.seek(pos - 1)
    while True:
        block = f.read(BLOCK_BYTES)
        if not block:
            return size
        i = block.find(b"\n")
        if i >= 0:
            return f.tell() - len(block) + i + 1


def iter_line_pieces(f, start, end, piece_bytes, report):
    """Yield (lineno, piece, offset_in_line, is_last_piece) for the lines in [start, end).

    Every piece is at most `piece_bytes` long. `lineno` counts from 1 at `start`;
    `report(n)` is told of every n bytes read.
    """
    f.seek(start)
    remaining = end - start
    lineno, offset, carry = 1, 0, b""
    while True:
        block = f.read(min(BLOCK_BYTES, remaining)) if remaining > 0 else b""
        if not block:
            if carry:
                yield lineno, carry, offset, True
            return
        remaining -= len(block)
        report(len(block))
        lines = (carry + block).split(b"\n")
        carry = lines.pop()
        for line in lines:
            line, offset = yield from _head_pieces(lineno, line, offset, piece_bytes)
            yield lineno, line, offset, True
            lineno, offset = lineno + 1, 0
        carry, offset = yield from _head_pieces(lineno, carry, offset, piece_bytes)


def _head_pieces(lineno, buf, offset, piece_bytes):
    """Yield leading pieces of a too-long buf; return the rest (<= piece_bytes) and its offset."""
    while len(buf) > piece_bytes:
        cut = cut_point(buf, piece_bytes)
        yield lineno, buf[:cut], offset, False
        buf, offset = buf[cut:], offset + cut
    return buf, offset


def decode(piece, lineno, offset=0):
    try:
        return piece.decode("utf-8")
    except UnicodeDecodeError as e:
        column = offset + e.start + 1
        raise LineError(lineno, f"invalid UTF-8 (byte 0x{piece[e.start]:02x} at column {column})") from None


def check_utf8(path, option="--corpus_path"):
    """Refuse a file that is not UTF-8 with preprocessing's own message, naming the line and
    column of the first bad byte (``option path:line: invalid UTF-8 (...)``). Blocks are
    decoded whole; only a block that fails is read again line by line to find the line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError:
                break
            if not block:
                return
        try:
            for lineno, piece, offset, _ in iter_line_pieces(f, 0, os.path.getsize(path),
                                                             PIECE_BYTES, lambda n: None):
                decode(piece, lineno, offset)
        except LineError as e:
            raise CorpusError(f"{option} {path}:{e.lineno}: {e.problem}") from None


def parse_object(text, lineno):
    """One JSONL line -> dict, with a one-line error for anything else."""
    if text.lstrip().startswith("["):
        raise LineError(lineno, "found a JSON array, but a .jsonl file holds one JSON object "
                                "per line (name a JSON array file .json)")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise LineError(lineno, f"broken JSON ({e.msg})") from None
    if not isinstance(record, dict):
        raise LineError(lineno, f"expected a JSON object, got {type(record).__name__}")
    return record


def iter_json_array(f, report, max_record_bytes=MAX_RECORD_BYTES):
    """Yield (lineno, record) from a file holding one JSON array, parsed incrementally.
    Errors name the example (from 1) as well as the line; a reader of the records should
    name it too (``LineError.in_example``), as several examples can share a line."""
    yield from _JsonArrayReader(f, report, max_record_bytes)


class _JsonArrayReader:
    """Incremental parser of ``[ {...}, {...} ]``: holds one block plus the current record."""

    def __init__(self, f, report, max_record_bytes):
        self.f, self.report = f, report
        self.max_record_bytes = max_record_bytes
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.eof = "", 0, False
        self.lineno, self.counted = 1, 0  # lineno is the line of buf[counted]
        self.example = 0  # the example being read, from 1 (0: none yet)

    def line(self, at=None):
        at = self.pos if at is None else at
        self.lineno += self.buf.count("\n", self.counted, at)
        self.counted = at
        return self.lineno

    def fill(self):
        self.line()
        block = self.f.read(BLOCK_BYTES)
        self.report(len(block))
        self.eof = not block
        try:
            text = self.decoder.decode(block, final=self.eof)
        except UnicodeDecodeError as e:
            lineno = self.line(len(self.buf)) + block.count(b"\n", 0, e.start)
            raise LineError(lineno, f"invalid UTF-8 (byte 0x{e.object[e.start]:02x})") from None
        self.buf, self.pos, self.counted = self.buf[self.pos:] + text, 0, 0

    def peek(self):
        """The next non-space character ('' at the end of the file)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf) or self.eof:
                return self.buf[self.pos:self.pos + 1]
            self.fill()

    def fail(self, problem, at=None):
        raise LineError(self.line(at), problem)

    def record(self):
        self.example += 1
        where = f"example {self.example}: "
        while True:
            try:
                record, end = json.JSONDecoder().raw_decode(self.buf, self.pos)
                break
            except json.JSONDecodeError as e:
                if self.eof:
                    self.fail(f"{where}broken JSON ({e.msg})", e.pos)
                if len(self.buf) - self.pos > self.max_record_bytes:
                    self.fail(f"{where}a JSON record over {self.max_record_bytes >> 20} MiB")
                self.fill()
        if not isinstance(record, dict):
            self.fail(f"{where}expected a JSON object, got {type(record).__name__}")
        lineno = self.line()
        self.pos = end
        return lineno, record

    def __iter__(self):
        if self.peek() != "[":
            found = repr(self.peek()) if self.peek() else "end of file"
            self.fail(f"expected a JSON array ('['), found {found}; "
                      f"a file of one JSON object per line must be named .jsonl")
        self.pos += 1
        if self.peek() == "]":
            self.pos += 1
        else:
            while True:
                self.peek()
                yield self.record()
                sep = self.peek()
                self.pos += 1
                if sep == "]":
                    break
                if sep != ",":
                    found = repr(sep) if sep else "end of file"
                    self.fail(f"after example {self.example}: broken JSON (expected ',' or "
                              f"']', found {found})", self.pos - 1)
        if self.peek():
            self.fail("unexpected data after the JSON array")
