"""Text files and terminals for generate_lm.py: one prompt per line in (or one JSON record per
line: ``{"instruction", "input"}`` or ``{"prompt"}``), one escaped continuation per line out,
and token-by-token streaming for interactive use."""
import copy
import re

from tencentpretrain.data.corpus import JSON_ARRAY, JSONL, LineError, corpus_kind, decode, \
    iter_json_array, parse_object
from tencentpretrain.data.processors.base import text_field
from tencentpretrain.generation import GenerationError
from tencentpretrain.prompts import ALPACA_TEMPLATE, build_prompt


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


def read_records(path):
    """(where, record) of a prompt file of JSON lines (.jsonl; blank lines skipped) or a JSON
    array (.json); ``where`` names the line (and the example of an array) for errors."""
    records = []
    try:
        with open(path, "rb") as f:
            if corpus_kind(path) == JSON_ARRAY:
                for index, (lineno, record) in enumerate(iter_json_array(f, lambda n: None), 1):
                    records.append((f"--test_path {path}:{lineno}: example {index}", record))
            else:
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        text = decode(line, lineno)
                        records.append((f"--test_path {path}:{lineno}", parse_object(text, lineno)))
    except OSError as e:
        raise GenerationError(f"--test_path {path}: {e.strerror}") from None
    except LineError as e:
        raise GenerationError(f"--test_path {path}:{e.lineno}: {e.problem}") from None
    if not records:
        raise GenerationError(f"--test_path {path}: no prompts (the file is empty)")
    return records


def record_prompt(record, where, template=None):
    """(text, rendered) of one prompt record: ``{"instruction", "input"}`` rendered through
    ``template`` (default Alpaca's) exactly as preprocess.py's alpaca processor renders its
    examples (rendered=True), or ``{"prompt": text}`` taken as a line of a text file
    (rendered=False: the generator's --prompt_template, if any, still applies). Other fields,
    such as an ``output``, are ignored."""
    if "prompt" in record and "instruction" in record:
        raise GenerationError(f'{where}: both "prompt" and "instruction"; give one')
    if "prompt" not in record and "instruction" not in record:
        raise GenerationError(f'{where}: needs "instruction" (and optionally "input") or '
                              f'"prompt"')
    try:
        if "prompt" in record:
            return text_field(record, "prompt", 0), False
        instruction = text_field(record, "instruction", 0)
        input_text = text_field(record, "input", 0, optional=True)
    except LineError as e:
        raise GenerationError(f"{where}: {e.problem}") from None
    return build_prompt(instruction, input_text, template or ALPACA_TEMPLATE), True


def record_turn(record, where):
    """The user turn of a prompt record under --chat_template: ``{"prompt"}`` as it is, an
    instruction record as the conversation processor takes it (instruction + input)."""
    from tencentpretrain.chat_templates import AlpacaTurn
    text, _ = record_prompt(record, where)  # its checks
    if "prompt" in record:
        return text
    return AlpacaTurn(text_field(record, "instruction", 0),
                      text_field(record, "input", 0, optional=True))


def encode_prompts(generator, test_path):
    """Prompt ids for every prompt of ``test_path``, checked before any is generated from:
    a .jsonl / .json file holds prompt records (``record_prompt``), any other file one prompt
    per line."""
    if corpus_kind(test_path) not in (JSONL, JSON_ARRAY):
        return [generator.encode(line, f"--test_path {test_path}:{i}")
                for i, line in enumerate(read_prompts(test_path), 1)]
    if generator.chat is not None:  # --chat_template: each record is one user turn
        return [generator.encode(record_turn(record, where), where)
                for where, record in read_records(test_path)]
    rendered_encoder = copy.copy(generator)
    rendered_encoder.template = None  # rendered records are taken as they are
    prompts = []
    for where, record in read_records(test_path):
        text, rendered = record_prompt(record, where, generator.template)
        prompts.append((rendered_encoder if rendered else generator).encode(text, where))
    return prompts


def generate_file(generator, test_path, prediction_path, batch_size=1):
    """A continuation (``generator``: a TextGenerator) for every prompt of ``test_path`` (a line,
    or a record of a .jsonl / .json file), one escaped line each in ``prediction_path``; all
    prompts are checked before the first is generated from. Returns how many were written."""
    prompts = encode_prompts(generator, test_path)
    with open(prediction_path, "w", encoding="utf-8") as out:
        for start in range(0, len(prompts), batch_size):
            for text in generator.complete(prompts[start:start + batch_size]):
                out.write(escape_line(text) + "\n")
            out.flush()
    return len(prompts)


def _typed_lines(stdin, stdout, prompt_marker):
    """Each line typed after the prompt marker, without its newline, until EOF (then a
    newline, so the shell prompt starts on its own line)."""
    while True:
        stdout.write(prompt_marker)
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return
        yield line.rstrip("\r\n")


def interactive(generator, stdin, stdout, prompt_marker="> "):
    """Read a prompt per line until EOF, stream each answer token by token."""
    printer = StreamPrinter(generator.tokenizer, stdout)
    for line in _typed_lines(stdin, stdout, prompt_marker):
        try:
            prompt = generator.encode(line)
        except GenerationError as e:
            stdout.write(f"error: {e}\n")
            continue
        generator.complete([prompt], on_token=printer)
        printer.finish()


def chat(session, stdin, stdout, prompt_marker="> "):
    """Multi-turn chat (``session``: a chat.ChatSession): read a user turn per line until EOF,
    stream each answer; ``/reset`` starts a new conversation (the system prompt stays)."""
    printer = StreamPrinter(session.tokenizer, stdout)
    for user in _typed_lines(stdin, stdout, prompt_marker):
        if user.strip() == "/reset":
            session.reset()
            continue
        try:
            session.reply(user, on_token=printer)
        except GenerationError as e:
            stdout.write(f"error: {e}\n")
            continue
        printer.finish()
