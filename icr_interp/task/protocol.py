"""What every prompt task offers an analysis: the :class:`PromptTask` protocol.

Two tasks make IC-recall prompts over a knowledge base: :class:`~icr_interp.task.prompts.ICRecallTask` (toy
token prompts of a fixed format, for models built here) and :class:`~icr_interp.task.text.TextICRecallTask`
(text prompts for pretrained LMs, tokenized by the model's own tokenizer).  Neither derives from the other:
what an analysis may call on "a task" is this protocol, which both implement -- draw prompts, corrupt them
(a relation or a query swap, with the same layout), read the knowledge base and the relation prior, name
tokens.  What only one task has stays on it: the toy task's fixed geometry (``n_ctx``, ``layout(n)``,
``vocab``, factual-recall prompts ``sample_facts``), the text task's tokenizer, templates and baselines
(``with_pairs``, ``named_relation_batch``, ``sample_pairs``).

The protocol is structural (``typing.Protocol``, runtime-checkable): ``isinstance(task, PromptTask)`` checks
that the members exist, and an annotation ``task: PromptTask`` says that a function takes either task.
"""

from typing import Protocol, runtime_checkable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.batch import Batch, CorruptedPairs


@runtime_checkable
class PromptTask(Protocol):
    """IC-recall prompts over a knowledge base, with their corruptions (see the module docstring)."""

    kb: KnowledgeBase  # the facts prompts are drawn from (a text task's: without facts it cannot tell apart)
    n_pairs: int  # number k of context pairs
    bos: bool  # whether every prompt starts with a BOS token

    @property
    def relation_weights(self) -> Float[Tensor, " relation"]:
        """How a prompt draws its relation (the prior of the Bayes ceiling, :mod:`icr_interp.task.ceiling`)."""
        ...

    def config(self) -> dict:
        """The task's settings, JSON-able (what a checkpoint or a report records)."""
        ...

    def sample(self, batch_size: int, seed: int | None = None, *, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> Batch:
        """``batch_size`` prompts with their targets and layout, drawn from ``seed`` or ``generator``."""
        ...

    def corruptible(self, batch: Batch, kind: str) -> Bool[Tensor, " batch"]:
        """Which prompts of ``batch`` have a corruption of ``kind``."""
        ...

    def corrupt(self, batch: Batch, kind: str, seed: int | None = None, *,
                generator: torch.Generator | None = None) -> Batch:
        """The corrupted counterpart of every prompt of ``batch``, same layout (a ValueError if one has none)."""
        ...

    def corrupt_pairs(self, batch: Batch, kind: str, seed: int | None = None, *,
                      generator: torch.Generator | None = None) -> CorruptedPairs:
        """Clean and corrupted batches of the prompts that have a corruption of ``kind`` (the rest dropped, counted)."""
        ...

    def to_str(self, tokens: Tensor) -> list | str:
        """Token ids as readable strings (a scalar as one string, a tensor as nested lists)."""
        ...


def describe(task: PromptTask) -> str:
    """One line: the task's class, its settings (:meth:`PromptTask.config`, dicts by size), its knowledge base."""
    shown = {k: f"<{len(v)} entries>" if isinstance(v, dict) else repr(v) for k, v in task.config().items()}
    settings = ", ".join(f"{k}={v}" for k, v in shown.items() if v != repr(""))
    return f"{type(task).__name__}({settings}, kb={task.kb!r})"
