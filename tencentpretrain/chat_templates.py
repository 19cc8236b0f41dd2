"""Chat templates: ``--chat_template NAME`` -> how a conversation becomes text and loss.

A template renders a conversation (an optional system prompt, then user/assistant turns) into
``Part``s: pieces of text, each trained or not, each belonging to a pair (0: what comes
before the first user turn). Special tokens are written in the text as the tokenizer spells
them (``<|im_end|>``), and ``bos`` / ``eos`` stand for the tokenizer's own. The conversation
is tokenized as one string (split at special tokens, as transformers does), and a token is
trained when it starts inside a trained part: every assistant turn's content and its
end-of-turn token; never system / user turns or role headers.

Adding a template is one function rendering the parts and one entry in ``TEMPLATES``
(its ``jinja`` twin is what the HF export writes as ``chat_template``).

``tokenizer`` is special: the Jinja ``chat_template`` of the HF tokenizer folder, rendered as
transformers renders it (see ``JinjaTemplate``).
"""
import functools
import json
import os
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Tuple

from tencentpretrain.errors import UserError
from tencentpretrain.prompts import ALPACA_TEMPLATE, build_prompt


class ChatTemplateError(UserError):
    """An unknown template, a template the tokenizer cannot spell, a bad Jinja file."""


class AlpacaTurn(str):
    """The user turn of an alpaca record: instruction + input as text, both kept in ``fields``
    so the alpaca template renders them as the alpaca processor does."""

    def __new__(cls, instruction, input_text):
        turn = super().__new__(cls, instruction + ("\n\n" + input_text if input_text else ""))
        turn.fields = (instruction, input_text)
        return turn


class Part(NamedTuple):
    text: str
    trained: bool
    pair: int  # 0: before the first user turn (bos, system); k: the k-th user/assistant pair


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    render: Callable  # (system, pairs, bos, eos, generation_prompt) -> [Part]; pairs: [(user, answer)]
    specials: Tuple[str, ...] = ()  # tokens it writes that must be single tokens
    stop: Tuple[str, ...] = ()  # tokens ending an assistant turn, besides eos
    split_parts: bool = False  # tokenize each part on its own (alpaca: as the alpaca processor)
    jinja: Optional[str] = None  # the same template in Jinja (HF export, tests)
    system: bool = True  # takes a system prompt
    multi_turn: bool = True  # renders more than one user/assistant pair (alpaca: one)

    def to_dict(self):
        return {"chat_template": self.name, "jinja": self.jinja, "stop": list(self.stop)}


# --- the renderers -------------------------------------------------------------------------


def _chatml(system, pairs, bos, eos, generation_prompt):
    parts = [Part(f"<|im_start|>system\n{system}<|im_end|>\n", False, 0)] if system is not None else []
    for k, (user, answer) in enumerate(pairs, 1):
        parts.append(Part(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", False, k))
        if answer is not None:
            parts += [Part(answer + "<|im_end|>", True, k), Part("\n", False, k)]
    return parts


CHATML_JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _llama3(system, pairs, bos, eos, generation_prompt):
    def header(role):
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"
    first = bos
    if system is not None:
        first += header("system") + system.strip() + "<|eot_id|>"
    parts = [Part(first, False, 0)]
    for k, (user, answer) in enumerate(pairs, 1):
        parts.append(Part(header("user") + user.strip() + "<|eot_id|>" + header("assistant"), False, k))
        if answer is not None:
            parts.append(Part(answer.strip() + "<|eot_id|>", True, k))
    return parts


LLAMA3_JINJA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")


def _llama2(system, pairs, bos, eos, generation_prompt):
    parts = []
    for k, (user, answer) in enumerate(pairs, 1):
        user = user.strip()
        if k == 1 and system is not None:
            user = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{user}"
        parts.append(Part(f"{bos}[INST] {user} [/INST]", False, k))
        if answer is not None:
            parts.append(Part(f" {answer.strip()} {eos}", True, k))
    return parts


LLAMA2_JINJA = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message | trim + '\\n<</SYS>>\\n\\n' + message['content'] | trim %}"
    "{% else %}{% set content = message['content'] | trim %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content + ' [/INST]' }}"
    "{% else %}{% generation %}{{ ' ' + content + ' ' + eos_token }}{% endgeneration %}{% endif %}"
    "{% endfor %}")


def _mistral(system, pairs, bos, eos, generation_prompt):
    parts = [Part(bos, False, 0)]
    for k, (user, answer) in enumerate(pairs, 1):
        if k == 1 and system is not None:
            user = system + "\n\n" + user
        parts.append(Part(f"[INST] {user} [/INST]", False, k))
        if answer is not None:
            parts.append(Part(answer + eos, True, k))
    return parts


MISTRAL_JINJA = (
    "{% if messages[0]['role'] == 'system' %}"
    "{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] + '\\n\\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
    "{{ bos_token }}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}"
    "{% if loop.index0 == 0 %}{{ '[INST] ' + system_message + message['content'] + ' [/INST]' }}"
    "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
    "{% else %}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{% endif %}"
    "{% endfor %}")


def _alpaca(system, pairs, bos, eos, generation_prompt):
    """Today's alpaca processor: [bos] + prompt + answer + [eos], each part tokenized alone.
    The user turn is (instruction, input) for alpaca records, else its text as instruction."""
    (user, answer), = pairs
    instruction, input_text = getattr(user, "fields", (user, ""))
    parts = [Part(bos, False, 1), Part(build_prompt(instruction, input_text, ALPACA_TEMPLATE), False, 1)]
    if answer is not None:
        parts += [Part(answer, True, 1), Part(eos, True, 1)]
    return parts


ALPACA_JINJA = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ 'Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\\n\\n### Instruction:\\n' + message['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{% endif %}"
    "{% endfor %}")


TEMPLATES = {
    "alpaca": ChatTemplate("alpaca", _alpaca, split_parts=True, jinja=ALPACA_JINJA, system=False,
                           multi_turn=False),
    "chatml": ChatTemplate("chatml", _chatml, ("<|im_start|>", "<|im_end|>"), ("<|im_end|>",),
                           jinja=CHATML_JINJA),
    "llama3": ChatTemplate("llama3", _llama3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
                           ("<|eot_id|>",), jinja=LLAMA3_JINJA),
    "llama2": ChatTemplate("llama2", _llama2, jinja=LLAMA2_JINJA),
    "mistral": ChatTemplate("mistral", _mistral, jinja=MISTRAL_JINJA),
}
TOKENIZER_TEMPLATE = "tokenizer"
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")  # stop tokens of Jinja templates
TEMPLATE_NAMES = tuple(TEMPLATES) + (TOKENIZER_TEMPLATE,)


# --- Jinja templates from a tokenizer folder ---------------------------------------------


def read_tokenizer_template(tokenizer_path):
    """The Jinja ``chat_template`` of an HF tokenizer folder: ``chat_template.jinja`` or the
    ``chat_template`` of ``tokenizer_config.json`` (a named list: the ``default`` one)."""
    if not tokenizer_path:
        raise ChatTemplateError("--chat_template tokenizer needs --tokenizer_path (a Hugging Face "
                                "tokenizer folder with a chat_template)")
    folder = tokenizer_path if os.path.isdir(tokenizer_path) else os.path.dirname(tokenizer_path)
    jinja_file = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    config_file = os.path.join(folder, "tokenizer_config.json")
    template = None
    if os.path.isfile(config_file):
        try:
            with open(config_file, encoding="utf-8") as f:
                template = json.load(f).get("chat_template")
        except (OSError, ValueError) as e:
            raise ChatTemplateError(f"{config_file}: unreadable ({e})") from None
    if isinstance(template, list):
        template = {t.get("name"): t.get("template") for t in template}.get("default")
    if not isinstance(template, str):
        raise ChatTemplateError(f"--chat_template tokenizer: {folder} has no chat_template "
                                f"(neither chat_template.jinja nor one in tokenizer_config.json)")
    return template


def _raise_exception(message):
    from jinja2.exceptions import TemplateError
    raise TemplateError(message)


@dataclass(frozen=True)
class JinjaTemplate:
    """A Jinja chat template rendered as transformers renders it: ImmutableSandboxedEnvironment
    with trim_blocks and lstrip_blocks, ``raise_exception``, the tokenizer's special tokens as
    variables, ``{% generation %}`` marking the trained text."""
    source: str
    name: str = TOKENIZER_TEMPLATE
    stop: Tuple[str, ...] = ()
    split_parts: bool = False
    specials: Tuple[str, ...] = ()
    system: bool = True
    marked: bool = True  # has {% generation %} blocks; else assistant contents are trained
    multi_turn: bool = True

    def render(self, system, pairs, bos, eos, generation_prompt):
        messages = ([{"role": "system", "content": system}] if system is not None else [])
        for user, answer in pairs:
            messages.append({"role": "user", "content": str(user)})
            if answer is not None:
                marked = answer if self.marked else _START + answer + _END
                messages.append({"role": "assistant", "content": marked})
        from jinja2.exceptions import TemplateError
        try:
            text = _compile(self.source).render(messages=messages, add_generation_prompt=generation_prompt,
                                                bos_token=bos, eos_token=eos)
        except TemplateError as e:
            raise ChatTemplateError(f"chat_template refused the conversation: {e}") from None
        if not self.marked:  # the end-of-turn token right after the content is trained too
            for end in self.stop + (eos,):
                text = text.replace(_END + end, end + _END)
        return _parts_from_marked(text, len(pairs))

    def to_dict(self):
        return {"chat_template": self.name, "jinja": self.source, "stop": list(self.stop)}


_START, _END = "\x00<gen>\x00", "\x00</gen>\x00"  # generation markers in the rendered text


@functools.lru_cache(maxsize=8)
def _compile(source):
    """The template compiled in transformers' environment, with ``{% generation %}`` blocks
    left as markers (so the trained spans are known) and a marker after each assistant turn."""
    from jinja2 import nodes
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_mark"), [], [], body).set_lineno(lineno)

        def _mark(self, caller):
            return _START + caller() + _END

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation])
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(source)
    except Exception as e:
        raise ChatTemplateError(f"chat_template: not a valid Jinja template ({e})") from None


def _parts_from_marked(text, num_pairs):
    """Parts from text holding generation markers; pair k ends where the k-th generation
    block ends, with the whitespace after it (the text of the next turn belongs to the next)."""
    parts, pair, i = [], 1, 0
    while True:
        a = text.find(_START, i)
        if a < 0:
            break
        b = text.find(_END, a)
        between = text[i:a]
        tail = len(between) - len(between.lstrip()) if pair > 1 else 0
        if tail:
            parts.append(Part(between[:tail], False, pair - 1))
        if between[tail:]:
            parts.append(Part(between[tail:], False, pair))
        parts.append(Part(text[a + len(_START):b], True, pair))
        pair += 1
        i = b + len(_END)
    if text[i:]:
        parts.append(Part(text[i:], False, max(pair - 1, 1) if pair > num_pairs else pair))
    return parts


def get_template(name, tokenizer_path=None):
    """The template of ``--chat_template NAME`` (``tokenizer``: the tokenizer folder's Jinja)."""
    if name == TOKENIZER_TEMPLATE:
        source = read_tokenizer_template(tokenizer_path)
        marked = re.search(r"{%-?\s*generation\s*-?%}", source) is not None
        stop = tuple(t for t in END_OF_TURN if t in source)
        return JinjaTemplate(source, stop=stop, marked=marked)
    if name not in TEMPLATES:
        raise ChatTemplateError(f"--chat_template {name}: unknown (choose from {', '.join(TEMPLATE_NAMES)})")
    return TEMPLATES[name]


# --- tokenizing a rendered conversation -------------------------------------------------


def special_text(tokenizer, token_id):
    return "" if token_id is None else tokenizer.id_to_piece(token_id)


def check_specials(template, tokenizer):
    """Every special token the template writes must be one token of the tokenizer."""
    missing = [t for t in template.specials if _single_id(tokenizer, t) is None]
    if missing and hasattr(tokenizer, "hf"):
        raise ChatTemplateError(
            f"--chat_template {template.name}: {', '.join(missing)} not single tokens of "
            f"{tokenizer.source}; use a tokenizer that has them (the model family's tokenizer.json)")
    if missing:
        raise ChatTemplateError(
            f"--chat_template {template.name}: {', '.join(missing)} not single tokens of "
            f"{tokenizer.source}; add them to the tokenizer and the checkpoint with "
            f"scripts/extend_vocab.py --base_spm_model_path {tokenizer.path} --add_special_tokens "
            f"\"{','.join(missing)}\" --output_spm_model_path NEW.model --input_model_path MODEL "
            f"--config_path CONFIG --output_model_path NEW_MODEL, then use --spm_model_path NEW.model")


def _single_id(tokenizer, token):
    if hasattr(tokenizer, "hf"):
        token_id = tokenizer.hf.token_to_id(token)
        return token_id if token_id is not None and tokenizer.encode(token) == [token_id] else None
    token_id = tokenizer.sp.PieceToId(token)
    return token_id if tokenizer.sp.IdToPiece(token_id) == token and token_id != tokenizer.unk_id else None


def encode_with_offsets(tokenizer, text, specials=()):
    """(ids, start character of each token) of ``text`` tokenized as transformers does: added /
    special tokens are single ids, the text between them is encoded in one piece."""
    if not text:
        return [], []
    if hasattr(tokenizer, "hf"):
        encoding = tokenizer.hf.encode(text, add_special_tokens=False)
        return list(encoding.ids), [start for start, _ in encoding.offsets]
    names = sorted({t for t in specials if t}, key=len, reverse=True)
    pattern = re.compile("|".join(map(re.escape, names))) if names else None
    ids, starts, i = [], [], 0
    for match in (pattern.finditer(text) if pattern else ()):
        _sp_chunk(tokenizer, text, i, match.start(), ids, starts)
        ids.append(tokenizer.sp.PieceToId(match.group()))
        starts.append(match.start())
        i = match.end()
    _sp_chunk(tokenizer, text, i, len(text), ids, starts)
    return ids, starts


def _sp_chunk(tokenizer, text, a, b, ids, starts):
    if a >= b:
        return
    chunk = text[a:b]
    char_of_byte = [k for k, ch in enumerate(chunk) for _ in ch.encode("utf-8")] + [len(chunk)]
    for piece in tokenizer.sp.encode(chunk, return_type="proto").pieces:
        ids.append(piece.id)
        starts.append(a + char_of_byte[min(piece.begin, len(char_of_byte) - 1)])


class Encoded(NamedTuple):
    ids: list
    trained: list  # per token: a trained (assistant) token
    pair_ends: list  # pair_ends[k]: tokens up to the end of pair k (k = 0: the preamble)


def encode_conversation(template, tokenizer, system, pairs, generation_prompt=False):
    """Token ids, trained flags and pair boundaries of a conversation under ``template``."""
    bos_id = tokenizer.bos_id if (tokenizer.add_bos or not template.split_parts) else None
    bos, eos = special_text(tokenizer, bos_id), special_text(tokenizer, tokenizer.eos_id)
    parts = template.render(system, pairs, bos, eos, generation_prompt)
    specials = tuple(template.specials) + (bos, eos)
    ids, trained, ends = [], [], [0] * (len(pairs) + 1)
    if template.split_parts:
        for part in parts:
            part_ids = encode_with_offsets(tokenizer, part.text, specials)[0]
            ids += part_ids
            trained += [part.trained] * len(part_ids)
            ends[part.pair] = len(ids)
    else:
        text = "".join(p.text for p in parts)
        ids, starts = encode_with_offsets(tokenizer, text, specials)
        k, position, bounds = 0, 0, []
        for part in parts:
            bounds.append((position + len(part.text), part))
            position += len(part.text)
        for start in starts:
            while k < len(bounds) - 1 and start >= bounds[k][0]:
                k += 1
            trained.append(bounds[k][1].trained)
            ends[bounds[k][1].pair] = len(trained)
    for k in range(1, len(ends)):  # a pair with no tokens of its own ends where the last did
        ends[k] = max(ends[k], ends[k - 1])
    return Encoded(ids, trained, ends)
