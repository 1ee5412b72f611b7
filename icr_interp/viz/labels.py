"""Role labels of prompt positions, the one place they are spelled: ``<bos>, s1, a1, ..., sk, ak, query``.

Roles come from :mod:`icr_interp.task.roles` and each example's own layout; this module only gives them
their display names (``subject_2`` -> ``s2``) and prefixes token strings with them (``s2:Paris``).  It needs
torch but neither circuitsvis nor matplotlib, so a text report can label rows cheaply.
"""

import torch
from torch import Tensor

from icr_interp.task import roles
from icr_interp.task.batch import Batch
from icr_interp.task.layout import Layout
from icr_interp.task.protocol import PromptTask
from icr_interp.task.vocab import Vocabulary

_SHORT = {"subject": "s", "answer": "a", "bos": "<bos>", "query": "query"}  # display name of a role


def _layout(batch_or_layout: Batch | Layout) -> Layout:
    return batch_or_layout.layout if isinstance(batch_or_layout, Batch) else batch_or_layout


def vocab_of(task_or_vocab: PromptTask | Vocabulary | None) -> PromptTask | Vocabulary | None:
    """The vocabulary of a task (or the vocabulary itself, or None); a text task is its own (it has ``to_str``)."""
    if isinstance(task_or_vocab, PromptTask):
        return getattr(task_or_vocab, "vocab", task_or_vocab)
    return task_or_vocab


def slot_roles(batch: Batch | Layout) -> list[str]:
    """The role (:mod:`icr_interp.task.roles` spelling) of every role slot of a prompt.

    ``bos`` (when every prompt has one), ``subject_1``, ``answer_1``, ..., ``query``.
    """
    layout = _layout(batch)
    k = layout.subject_end.shape[1]
    bos = ["bos"] if bool((layout.bos_pos >= 0).all()) else []
    return bos + [f"{r}_{j + 1}" for j in range(k) for r in ("subject", "answer")] + ["query"]


def short_label(role: str) -> str:
    """Display form of a role: ``subject_2`` -> ``s2``, ``answer_2`` -> ``a2``, ``bos`` -> ``<bos>``."""
    base, _, index = roles.canonical(role).partition("_")
    return _SHORT[base] + index if index else _SHORT.get(base, base)


def slot_labels(batch: Batch | Layout) -> list[str]:
    """Display names of the role slots: ``<bos>, s1, a1, ..., query``."""
    return [short_label(r) for r in slot_roles(batch)]


def slot_positions(batch: Batch | Layout) -> Tensor:
    """Per-example position of every slot of :func:`slot_roles`, ``[batch slot]``."""
    layout = _layout(batch)
    return torch.cat([roles.positions(layout, r)[0] for r in slot_roles(layout)], dim=1)


def position_labels(layout: Layout, n_pos: int, i: int = 0, other: str = "other") -> list[str]:
    """The role label of every position of example ``i`` (``other`` where a position has no role)."""
    labels = [other] * n_pos
    for label, pos in zip(slot_labels(layout), slot_positions(layout)[i].tolist()):
        if pos >= 0:
            labels[pos] = label
    return labels


def role_labels(task_or_vocab: PromptTask | Vocabulary | None, batch: Batch, i: int) -> list[str]:
    """Token strings of example ``i``, prefixed by their role from the batch's layout.

    Args:
        task_or_vocab: gives the token strings; ``None`` shows token ids.
        batch: the prompts and their layout.
        i: example index.

    Returns:
        One string per position: ``"<bos>"``, ``"s1:s12"``, ``"a1:a40"``, ...,
        ``"query:s3"``; positions without a role keep their bare token string.
        The strings are plain text (they may hold anything a knowledge base names): escape them for
        their output context (:mod:`icr_interp.viz.escape`).
    """
    vocab = vocab_of(task_or_vocab)
    tokens = batch.tokens[i].cpu()
    names = vocab.to_str(tokens) if vocab is not None else [str(int(t)) for t in tokens]
    labels = list(names)
    layout = batch.layout.to("cpu")
    for role in slot_roles(batch):
        (pos,) = roles.positions(layout, role)
        p = int(pos[i, 0])
        if p >= 0 and role != "bos":  # BOS's token string already says what it is
            labels[p] = f"{short_label(role)}:{names[p]}"
    return labels
