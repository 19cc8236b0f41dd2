"""Multi-turn chat with a chat template (chat_templates.py): the conversation so far is rendered
as the conversation processor renders training data, with the generation prompt, and the answer
ends at the template's end-of-turn token or eos.

Every turn renders the whole conversation again (system prompt, the pairs kept, the new user
turn), so the ids the model sees equal the ids of that conversation in a dataset. The history
stays within the context: the oldest pairs are dropped (never the system prompt) until the
prompt leaves ``reserve`` tokens for the answer.
"""
from tencentpretrain.chat_templates import (_single_id, check_specials, encode_conversation,
                                            get_template)
from tencentpretrain.generation import GenerationError


def stop_ids(template, tokenizer):
    """The ids that end an answer: eos, then the template's end-of-turn tokens (the
    ``eos_token_id`` list of the exported generation_config.json)."""
    ids = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    for token in template.stop:
        token_id = _single_id(tokenizer, token)
        if token_id is not None and token_id not in ids:
            ids.append(token_id)
    return ids


def load_chat_template(name, tokenizer):
    """``--chat_template NAME`` checked against the tokenizer (its special tokens are single
    tokens; ``tokenizer``: the Jinja of the --tokenizer_path folder)."""
    template = get_template(name, getattr(tokenizer, "tokenizer_path", None))
    check_specials(template, tokenizer)
    return template


class ChatSession:
    """A conversation with ``generator`` (a TextGenerator) under ``template``.

    ``render(user)`` gives the prompt ids of the next turn; ``reply(user)`` generates the
    answer and keeps the pair. Setting up a session makes the generator stop at the
    template's stop ids as well as eos, and render its prompts as one user turn."""

    def __init__(self, generator, template, system_prompt=None, reserve=None):
        self.generator, self.template, self.system = generator, template, system_prompt
        self.tokenizer = generator.tokenizer
        if system_prompt is not None and not template.system:
            raise GenerationError(f"--chat_template {template.name} takes no system prompt")
        seq_length = generator.seq_length
        self.reserve = reserve if reserve is not None else min(generator.max_new_tokens,
                                                               seq_length // 2)
        self.history = []  # [(user, answer)] kept in the context
        self.dropped = 0  # pairs dropped from the context so far
        generator.stop_ids = stop_ids(template, self.tokenizer)
        generator.chat = self

    def render(self, user, history=()):
        """Prompt ids: system prompt, ``history`` pairs, ``user`` and the generation prompt."""
        pairs = list(history) + [(user, None)]
        return encode_conversation(self.template, self.tokenizer, self.system, pairs, True).ids

    def prompt_ids(self, user):
        """The next turn's prompt, dropping the oldest pairs while it leaves fewer than
        ``reserve`` tokens of the context for the answer."""
        if not self.template.multi_turn:
            self.history = []
        while True:
            ids = self.render(user, self.history)
            if not self.history or len(ids) + self.reserve <= self.generator.seq_length:
                break
            self.history.pop(0)
            self.dropped += 1
        return self.generator.check_length(ids, "chat turn")

    def reply(self, user, on_token=None):
        """The answer to ``user`` (generated up to a stop id); the pair joins the history."""
        ids = self.prompt_ids(user)
        new_ids = self.generator.complete_ids([ids], on_token)[0]
        answer = self.tokenizer.decode(new_ids)
        self.history.append((user, answer))
        self.last_ids = new_ids
        return answer

    def reset(self):
        self.history, self.dropped = [], 0


# --- the template of an HF export --------------------------------------------------------

_GENERATION_TAGS = r"{%-?\s*(?:end)?generation\s*-?%}"


def export_template(value, tokenizer):
    """(Jinja, stop ids) of ``--chat_template VALUE`` for an HF export: a template name
    (``tokenizer``: the --tokenizer_path folder's), or a conversation dataset (its folder or
    meta.json), whose record of the template it was made with is used. The Jinja loses its
    ``{% generation %}`` markers (transformers-only tags; the rendering is the same)."""
    import json
    import os
    import re

    from tencentpretrain.chat_templates import TEMPLATE_NAMES, ChatTemplateError
    if value in TEMPLATE_NAMES:
        template = load_chat_template(value, tokenizer)
        record = template.to_dict()
    else:
        meta_path = os.path.join(value, "meta.json") if os.path.isdir(value) else value
        if not os.path.isfile(meta_path):
            raise ChatTemplateError(f"--chat_template {value}: neither a template name "
                                    f"({', '.join(TEMPLATE_NAMES)}) nor a dataset folder")
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise ChatTemplateError(f"--chat_template {value}: unreadable meta.json ({e})") from None
        record = meta.get("chat_template") if isinstance(meta, dict) else None
        if not isinstance(record, dict) or not record.get("jinja"):
            raise ChatTemplateError(f"--chat_template {value}: the dataset records no chat "
                                    f"template (not made by --data_processor conversation)")
        if meta.get("tokenizer_sha256") not in (None, tokenizer.sha256):
            raise ChatTemplateError(f"--chat_template {value}: the dataset was made with another "
                                    f"tokenizer ({meta.get('tokenizer_file')}) than {tokenizer.source}")
    stops = [tokenizer.eos_id] if tokenizer.eos_id is not None else []
    for token in record.get("stop", ()):
        token_id = _single_id(tokenizer, token)
        if token_id is None:
            raise ChatTemplateError(f"--chat_template {value}: its end-of-turn token {token} is "
                                    f"not a single token of {tokenizer.source}")
        if token_id not in stops:
            stops.append(token_id)
    return re.sub(_GENERATION_TAGS, "", record["jinja"]), stops
