"""The instruction prompt template: the one definition shared by preprocessing and inference.

A model fine-tuned on prompts built here must be queried with the very same text, so both
`preprocess.py --data_processor alpaca` and inference call `build_prompt`.

Template file (``--prompt_template FILE``): a JSON object in the alpaca-lora format

    {"prompt_input": "...{instruction}...{input}...", "prompt_no_input": "...{instruction}..."}

``prompt_input`` is required and must contain ``{instruction}`` and ``{input}``;
``prompt_no_input`` (used when the input is empty) is optional and defaults to
``prompt_input`` with an empty input. The placeholders are replaced literally (no
``str.format``), so other braces in the text need no escaping. Other keys are ignored.
"""
import re
from typing import NamedTuple

from tencentpretrain.errors import UserError
from tencentpretrain.utils.files import read_json


_PLACEHOLDER = re.compile(r"\{(instruction|input)\}")


class TemplateError(UserError):
    """A prompt template file that cannot be used; the message is one line."""


class PromptTemplate(NamedTuple):
    prompt_input: str
    prompt_no_input: str

    def to_dict(self):
        return dict(self._asdict())


ALPACA_TEMPLATE = PromptTemplate(
    prompt_input=(
        "Below is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    prompt_no_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:\n"
    ),
)


def build_prompt(instruction, input_text="", template=None):
    """The prompt text; with the default template it ends with "### Response:\\n"."""
    template = template or ALPACA_TEMPLATE
    text = template.prompt_input if input_text else template.prompt_no_input
    values = {"instruction": instruction, "input": input_text}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def load_template(path):
    """Read a template file (format in the module docstring)."""
    data = read_json(path, TemplateError, f"--prompt_template {path}", expect=dict)
    if not isinstance(data.get("prompt_input"), str):
        raise TemplateError(f'--prompt_template {path}: needs a "prompt_input" string')
    with_input = data["prompt_input"]
    for placeholder in ("{instruction}", "{input}"):
        if placeholder not in with_input:
            raise TemplateError(f'--prompt_template {path}: "prompt_input" lacks {placeholder}')
    without_input = data.get("prompt_no_input", with_input.replace("{input}", ""))
    if not isinstance(without_input, str) or "{instruction}" not in without_input:
        raise TemplateError(f'--prompt_template {path}: "prompt_no_input" lacks {{instruction}}')
    return PromptTemplate(with_input, without_input)
