"""Text files and terminals for generate_lm.py: one prompt per line in, one escaped
continuation per line out, and token-by-token streaming for interactive use."""
import re

from tencentpretrain.generation import GenerationError


class StreamPrinter:
    """Prints one row's continuation as tokens arrive (``on_token``), holding back a
    piece while it ends in an incomplete UTF-8 sequence (byte-fallback tokens)."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out = tokenizer, out
        self.ids, self.printed = [], 0

    def __call__(self, row, token_id):
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):
            self.out.write(text[self.printed:])
            self.out.flush()
            self.printed = len(text)

    def finish(self):
        text = self.tokenizer.decode(self.ids)
        self.out.write(text[self.printed:] + "\n")
        self.out.flush()
        self.ids, self.printed = [], 0


def escape_line(text):
    r"""One continuation per output line: ``\`` -> ``\\``, newline -> ``\n``, CR -> ``\r``."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def unescape_line(line):
    """The continuation text back from a line written by ``escape_line``."""
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "r": "\r"}.get(m.group(1), m.group(1)), line)


def read_prompts(path):
    """One prompt per line (kept literally, no unescaping); line numbers for errors."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise GenerationError(f"--test_path {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise GenerationError(f"--test_path {path}: not UTF-8 text ({e.reason} at byte "
                              f"{e.start})") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start another
    if not any(line.strip() for line in lines):
        raise GenerationError(f"--test_path {path}: no prompts (the file is empty)")
    return lines


def generate_file(generator, test_path, prediction_path, batch_size=1):
    """A continuation (``generator``: a TextGenerator) for every line of ``test_path``, one
    escaped line each in ``prediction_path``; all prompts are checked before the first is
    generated from. Returns how many were written."""
    lines = read_prompts(test_path)
    prompts = [generator.encode(line, f"--test_path {test_path}:{i}")
               for i, line in enumerate(lines, 1)]
    with open(prediction_path, "w", encoding="utf-8") as out:
        for start in range(0, len(prompts), batch_size):
            for text in generator.complete(prompts[start:start + batch_size]):
                out.write(escape_line(text) + "\n")
            out.flush()
    return len(prompts)


def interactive(generator, stdin, stdout, prompt_marker="> "):
    """Read a prompt per line until EOF, stream each answer token by token."""
    printer = StreamPrinter(generator.tokenizer, stdout)
    while True:
        stdout.write(prompt_marker)
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return
        try:
            prompt = generator.encode(line.rstrip("\r\n"))
        except GenerationError as e:
            stdout.write(f"error: {e}\n")
            continue
        generator.complete([prompt], on_token=printer)
        printer.finish()
