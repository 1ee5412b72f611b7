"""A batch of prompts: token ids, targets, the facts behind them, and their :class:`~icr_interp.task.layout.Layout`.

Both prompt tasks (:class:`~icr_interp.task.protocol.PromptTask`) return a :class:`Batch`, so every analysis
takes either one's batches unchanged; :class:`CorruptedPairs` is a clean batch with its corrupted twin, the
input of every causal analysis (``task.corrupt_pairs``).  Batches index, slice and move like their tensors,
and their layout follows.
"""

from dataclasses import dataclass, fields
from typing import NamedTuple

from jaxtyping import Int
from torch import Tensor

from icr_interp.task.layout import Layout


@dataclass(frozen=True)
class Batch:
    """A batch of IC-recall prompts with targets and layout."""

    tokens: Int[Tensor, "batch pos"]  # prompt token ids
    answers: Int[Tensor, " batch"]  # target token id a*(s_q, r)
    relations: Int[Tensor, " batch"]  # hidden relation id
    subjects: Int[Tensor, "batch pair"]  # context subject ids s_i (knowledge-base ids)
    query: Int[Tensor, " batch"]  # query subject id s_q
    layout: Layout  # where each role sits
    # answer ids the context shows (knowledge-base ids); None: a*(s_i, r), as every toy prompt (a shuffled
    # text prompt, the function-vector null, shows other answers)
    context_answers: Int[Tensor, "batch pair"] | None = None

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device) -> "Batch":
        moved = {f.name: _move(getattr(self, f.name), device) for f in fields(self) if f.name != "layout"}
        return Batch(**moved, layout=self.layout.to(device))

    def __getitem__(self, idx) -> "Batch":
        """Sub-batch by index, slice or mask (an integer index keeps a batch of one)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        sub = {f.name: _index(getattr(self, f.name), idx) for f in fields(self) if f.name != "layout"}
        return Batch(**sub, layout=self.layout[idx])


def _move(value, device):
    return None if value is None else value.to(device)


def _index(value, idx):
    return None if value is None else value[idx]


class CorruptedPairs(NamedTuple):
    """Matched clean and corrupted batches (``task.corrupt_pairs``, :class:`~icr_interp.task.protocol.PromptTask`)."""

    clean: Batch  # the clean prompts that have a corruption
    corrupted: Batch  # their corrupted counterparts, same order and layout
    n_dropped: int  # clean prompts left out for want of a corruption

    @property
    def n_requested(self) -> int:
        """Prompts asked for (or drawn): kept plus dropped, so a report can say "30 of 32 kept"."""
        return len(self.clean) + self.n_dropped
