"""Data processor registry: ``--data_processor`` name -> processor class (see base.py).

Adding a processor is one file in this package and one line in ``str2processor``: it declares
what its datasets hold (``Processor.holds``, meta.json ``"holds"``), and readers open that
(tests/test_processor_registry.py registers one at run time and trains and evaluates on it).
"""
from collections.abc import Mapping

from tencentpretrain.data.format import DatasetError
from tencentpretrain.data.processors.alpaca import AlpacaProcessor
from tencentpretrain.data.processors.conversation import ConversationProcessor
from tencentpretrain.data.processors.lm import LmProcessor
from tencentpretrain.data.processors.seq2seq import Seq2seqProcessor
from tencentpretrain.data.processors.t5 import T5Processor

str2processor = {"lm": LmProcessor, "alpaca": AlpacaProcessor, "conversation": ConversationProcessor,
                 "t5": T5Processor, "seq2seq": Seq2seqProcessor}
ALIASES = {"llm_pretrain": "lm", "llm_sft": "alpaca"}  # TencentPretrain's names


class _Accepted(Mapping):
    """Accepted --data_processor name -> canonical name (aliases after their target), read
    from ``str2processor`` on each use, so a processor registered at run time is accepted."""

    def _names(self):
        return {alias: name for name in str2processor
                for alias in [name] + [a for a, target in ALIASES.items() if target == name]}

    def __getitem__(self, name):
        return self._names()[name]

    def __iter__(self):
        return iter(self._names())

    def __len__(self):
        return len(self._names())


PROCESSORS = _Accepted()


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
