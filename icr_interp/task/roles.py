"""Prompt roles: the one vocabulary for "which positions of a prompt" every analysis uses.

An IC-recall prompt ``[BOS, s_1, a_1, ..., s_k, a_k, s_q]`` has these roles
(one spelling, accepted by every function that takes a role):

=============  ===============================================
``subjects``   every context subject s_i
``answers``    every context answer a_i
``context``    every context pair (subjects and answers)
``pair_i``     the i-th pair (s_i, a_i), 1-based
``subject_i``  the i-th subject s_i
``answer_i``   the i-th answer a_i
``query``      the query subject s_q
``bos``        the BOS token (absent from prompts without one)
``prediction`` the position whose logits predict the answer (the query in toy prompts)
``separators`` template text outside every other role (``": "``, newlines; none in toy prompts)
``all``        every position
=============  ===============================================

Positions always come from each example's own :class:`~icr_interp.task.layout.Layout`,
never from one position shared by the whole batch.  A role is a set of token
*spans* (a multi-token name in a text prompt): :func:`mask` covers every token
of them, so attention to a role is the mass summed over its spans, and
:func:`positions` gives each span's last token.  The singular ``subject``
and ``answer`` of the first release are still read, as ``subjects`` and
``answers``, with a deprecation warning (the alias table, :data:`icr_interp._moved.MOVED_ARGS`).
"""

from collections.abc import Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from icr_interp._moved import MOVED_ARGS, moved_arg

GROUPS = ("subjects", "answers", "context", "query", "bos", "prediction", "separators", "all")  # no index
INDEXED = ("pair", "subject", "answer")  # roles written ``<name>_<i>``, i = 1..k
_ALIASES = MOVED_ARGS[__name__]  # first-release spellings (subject, answer) -> the plural


def canonical(name: str) -> str:
    """The one spelling of a role name (ValueError listing the valid ones otherwise)."""
    if not isinstance(name, str):
        raise ValueError(f"a role name must be a string, got {name!r}")
    if name in _ALIASES:
        return moved_arg(__name__, name, stacklevel=4)
    base, sep, index = name.partition("_")
    if name in GROUPS or (sep and base in INDEXED and index.isdigit() and int(index) >= 1):
        return name
    raise ValueError(f"unknown role {name!r}; roles are {', '.join(GROUPS)} and "
                     f"{', '.join(f'{r}_<i>' for r in INDEXED)}")


def default_roles(layout) -> list[str]:
    """subjects, answers, context, every pair, query, BOS when the prompts have one, and -- where the
    prediction position is not the query's (text prompts) -- the prediction position and the separators."""
    k = layout.subject_end.shape[1]
    has_bos = bool((layout.bos_pos >= 0).any())
    text = bool((layout.pred_pos != layout.query_end).any())
    return ["subjects", "answers", "context", *(f"pair_{i + 1}" for i in range(k)), "query",
            *(["bos"] if has_bos else []), *(["prediction", "separators"] if text else [])]


def _pair_index(layout, name: str) -> tuple[str, int | None]:
    """``("pair", 1)`` for ``"pair_2"`` (0-based, checked against k); ``(name, None)`` for a whole role."""
    base, _, index = name.partition("_")
    if not index:
        return base, None
    k = layout.subject_end.shape[1]
    if int(index) > k:
        raise ValueError(f"role {name!r} is out of range for k={k} pairs")
    return base, int(index) - 1


def positions(layout, name: str) -> list[Tensor]:
    """The position tensors (``[batch n]`` each, -1 = absent) that make up role ``name``.

    ``"all"`` has no position tensor: it is every position (see :func:`mask`).
    """
    name = canonical(name)
    base, i = _pair_index(layout, name)
    if i is not None:
        pick = slice(i, i + 1)
        return {"subject": [layout.subject_end[:, pick]], "answer": [layout.answer_end[:, pick]],
                "pair": [layout.subject_end[:, pick], layout.answer_end[:, pick]]}[base]
    if name == "separators":
        raise ValueError("role 'separators' has no position per span; use mask()")
    return {"subjects": [layout.subject_end], "answers": [layout.answer_end],
            "context": [layout.subject_end, layout.answer_end], "query": [layout.query_end[:, None]],
            "bos": [layout.bos_pos[:, None]], "prediction": [layout.pred_pos[:, None]], "all": []}[name]


def mask(layout, name: str, n_pos: int) -> Bool[Tensor, "batch pos"]:
    """Per-example boolean mask of every token of role ``name``'s spans in prompts of ``n_pos`` tokens.

    ``layout`` is a :class:`~icr_interp.task.prompts.Layout` or anything carrying one (a Batch).
    """
    layout, name = getattr(layout, "layout", layout), canonical(name)
    if name == "all":
        return torch.ones(layout.query_end.shape[0], n_pos, dtype=torch.bool, device=layout.query_end.device)
    m = layout.span_masks(n_pos)
    base, i = _pair_index(layout, name)
    if i is not None:
        return {"subject": m.subject[:, i], "answer": m.answer[:, i], "pair": m.subject[:, i] | m.answer[:, i]}[base]
    return {"subjects": lambda: m.subject.any(1), "answers": lambda: m.answer.any(1),
            "context": lambda: m.subject.any(1) | m.answer.any(1), "query": lambda: m.query, "bos": lambda: m.bos,
            "prediction": lambda: m.prediction, "separators": lambda: m.separators}[name]()


def masks(layout, n_pos: int, names: Sequence[str] | None = None) -> dict[str, Bool[Tensor, "batch pos"]]:
    """Masks of several roles, keyed by their canonical names (default: :func:`default_roles`)."""
    names = default_roles(layout) if names is None else [canonical(n) for n in names]
    return {name: mask(layout, name, n_pos) for name in names}
