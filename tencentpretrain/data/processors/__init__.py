"""Data processor registry: ``--data_processor`` name -> processor class (see base.py).

Adding a processor is one file in this package and one line in ``str2processor``.
"""
from ..format import DatasetError
from .alpaca import AlpacaProcessor
from .conversation import ConversationProcessor
from .lm import LmProcessor

str2processor = {"lm": LmProcessor, "alpaca": AlpacaProcessor, "conversation": ConversationProcessor}
ALIASES = {"llm_pretrain": "lm", "llm_sft": "alpaca"}  # TencentPretrain's names
PROCESSORS = {alias: name for name in str2processor  # accepted -> canonical, aliases after
              for alias in [name] + [a for a, target in ALIASES.items() if target == name]}


def get_processor(name):
    """The processor class for a --data_processor name or alias."""
    if name not in PROCESSORS:
        raise DatasetError(f"--data_processor {name}: unknown (choose from {', '.join(PROCESSORS)})")
    return str2processor[PROCESSORS[name]]


def check_options(processor, prompt_template, packing, chat_template=None, train_on_prompt=False,
                  mask_history=False):
    """Options only some processors take are refused, naming those that do."""
    for option, given, capability in (("--prompt_template", prompt_template, "with_prompts"),
                                      ("--packing", packing, "can_pack"),
                                      ("--chat_template", chat_template, "with_mask"),
                                      ("--train_on_prompt", train_on_prompt, "with_mask"),
                                      ("--mask_history", mask_history, "with_mask")):
        if given and not getattr(processor, capability):
            able = " / ".join(name for name, cls in str2processor.items() if getattr(cls, capability))
            raise DatasetError(f"{option} applies to --data_processor {able} only")
