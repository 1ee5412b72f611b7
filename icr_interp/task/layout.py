"""The span layout of a batch of prompts: where each role's tokens sit, per example.

A prompt's roles -- the context subjects s_i and answers a_i, the query subject s_q, BOS, and the position
whose logits predict the answer -- each occupy a *span* of tokens: one token in the toy prompts, a multi-token
name in a text prompt ("Burkina Faso").  :class:`Layout` holds, for every example of a batch, each span's
first (``*_start``) and last (``*_end``) token, the position of BOS (``bos_pos``) and the prediction position
(``pred_pos``).  It is the one shape of a span between the tokenizer and a patch:

* text prompts build it from their tokenized spans (:meth:`Layout.from_encoded`,
  :class:`~icr_interp.task.text_spans.Encoded`); toy prompts from their fixed format
  (:meth:`~icr_interp.task.prompts.ICRecallTask.layout`);
* batches are concatenated with it (:meth:`Layout.cat`) and sliced with it (``layout[idx]``);
* prompts are grouped -- and a corruption is checked to keep its clean prompt's positions -- by
  :meth:`Layout.keys`, one hashable tuple per example;
* role masks and positions are read from it (:meth:`Layout.span_masks`, :mod:`icr_interp.task.roles`).

The first release called each span's last token ``subject_pos``, ``answer_pos``, ``query_pos``: those names
(attributes and constructor keywords) still read, as ``subject_end``, ``answer_end``, ``query_end``, with a
DeprecationWarning from the alias table (:mod:`icr_interp._moved`).  ``bos_pos`` and ``pred_pos`` are single
positions, not spans, and keep their names.
"""

import functools
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from icr_interp._moved import MOVED_ATTRS, moved_attr
from icr_interp.task.text_spans import Encoded

ROLE_NAMES = ("other", "subject", "answer", "query", "bos")  # role ids of :meth:`Layout.role_of_positions`


@dataclass(frozen=True)
class Layout:
    """Per-example token spans of each role in a prompt, and where the answer is predicted (module docstring).

    The ``*_end`` fields hold each span's **last** token and the ``*_start`` fields its first.  Attention to a
    role is the mass summed over its span (:meth:`span_masks`).  ``pred_pos`` is the position whose logits
    predict the answer: the query itself in the toy prompts, the last token (the separator after the query
    subject) in text prompts.  Text batches are right-padded: positions after ``pred_pos`` are padding, which
    a causal model never reads at or before ``pred_pos``.

    The optional fields default to one-token spans (start = end) and ``pred_pos = query_end``, so
    ``Layout(subject_end, answer_end, query_end, bos_pos)`` is the first release's toy layout.  -1: absent.
    """

    subject_end: Int[Tensor, "batch pair"]  # last token of s_i
    answer_end: Int[Tensor, "batch pair"]  # last token of a_i
    query_end: Int[Tensor, " batch"]  # last token of s_q
    bos_pos: Int[Tensor, " batch"]  # position of BOS, -1 without one
    subject_start: Int[Tensor, "batch pair"] | None = None  # first token of s_i (None: subject_end)
    answer_start: Int[Tensor, "batch pair"] | None = None  # first token of a_i (None: answer_end)
    query_start: Int[Tensor, " batch"] | None = None  # first token of s_q (None: query_end)
    pred_pos: Int[Tensor, " batch"] | None = None  # whose logits predict the answer (None: query_end)

    def __post_init__(self) -> None:
        for name, end in (("subject_start", "subject_end"), ("answer_start", "answer_end"),
                          ("query_start", "query_end"), ("pred_pos", "query_end")):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(self, end).clone())

    # ------------------------------------------------------------ build
    @classmethod
    def from_encoded(cls, encoded: Sequence[Encoded], n_pairs: int) -> "Layout":
        """The layout of tokenized text prompts (:func:`~icr_interp.task.text_spans.encode_prompts`).

        Each :class:`~icr_interp.task.text_spans.Encoded` gives inclusive ``(first, last)`` token spans; the
        prediction position is each prompt's last token.  ``n_pairs`` (k) shapes an empty batch as ``[0, k]``.
        """
        wrong = next((len(e.subjects) for e in encoded if len(e.subjects) != n_pairs or len(e.answers) != n_pairs),
                     None)
        if wrong is not None:
            raise ValueError(f"a prompt has {wrong} context pairs, the layout {n_pairs}")
        n = len(encoded)
        spans = lambda key, j: torch.tensor([[s[j] for s in getattr(e, key)] for e in encoded],  # noqa: E731
                                            dtype=torch.long).reshape(n, n_pairs)
        one = lambda f: torch.tensor([f(e) for e in encoded], dtype=torch.long).reshape(n)  # noqa: E731
        return cls(subject_end=spans("subjects", 1), answer_end=spans("answers", 1),
                   query_end=one(lambda e: e.query[1]), bos_pos=one(lambda e: e.bos),
                   subject_start=spans("subjects", 0), answer_start=spans("answers", 0),
                   query_start=one(lambda e: e.query[0]), pred_pos=one(lambda e: len(e.ids) - 1))

    @classmethod
    def cat(cls, layouts: Sequence["Layout"]) -> "Layout":
        """One layout of the examples of several, in order (their batches concatenated)."""
        layouts = list(layouts)
        if not layouts:
            raise ValueError("Layout.cat needs at least one layout")
        ks = sorted({lay.n_pairs for lay in layouts})
        if len(ks) > 1:
            raise ValueError(f"cannot concatenate layouts of different numbers of context pairs: {ks}")
        return cls(**{f.name: torch.cat([getattr(lay, f.name) for lay in layouts]) for f in fields(cls)})

    def to(self, device) -> "Layout":
        return Layout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __getitem__(self, idx) -> "Layout":
        """The layout of a sub-batch (index tensor, slice or mask over examples)."""
        return Layout(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    # ------------------------------------------------------------- read
    @property
    def n_examples(self) -> int:
        return self.query_end.shape[0]

    @property
    def n_pairs(self) -> int:
        """Number k of context pairs."""
        return self.subject_end.shape[1]

    @property
    def one_token_spans(self) -> bool:
        """Whether every role is one token (the toy prompts)."""
        return bool((self.subject_start == self.subject_end).all() and (self.answer_start == self.answer_end).all()
                    and (self.query_start == self.query_end).all())

    def keys(self) -> list[tuple]:
        """Per example, what must match for two prompts to align position by position (a corruption keeps it).

        ``(length, subject spans, answer spans, query span, BOS)``: the length through the prediction position
        (``pred_pos + 1``), each span an inclusive ``(first, last)`` pair.  Hashable, so prompts group by it.
        """
        lay = self.to("cpu")
        pair = lambda start, end: tuple(zip(start.tolist(), end.tolist()))  # noqa: E731
        return [(int(lay.pred_pos[i]) + 1, pair(lay.subject_start[i], lay.subject_end[i]),
                 pair(lay.answer_start[i], lay.answer_end[i]), (int(lay.query_start[i]), int(lay.query_end[i])),
                 int(lay.bos_pos[i])) for i in range(lay.n_examples)]

    def span_masks(self, n_pos: int) -> "SpanMasks":
        """Boolean ``[batch, pair, pos]`` masks of each subject and answer span, ``[batch, pos]`` of the others."""
        pos = torch.arange(n_pos, device=self.query_end.device)
        def within(start: Tensor, end: Tensor) -> Tensor:  # [..., pos]: start <= pos <= end, end >= 0 (present)
            return (pos >= start[..., None]) & (pos <= end[..., None]) & (end[..., None] >= 0)

        bos = (pos == self.bos_pos[:, None]) & (self.bos_pos[:, None] >= 0)
        return SpanMasks(subject=within(self.subject_start, self.subject_end),
                         answer=within(self.answer_start, self.answer_end),
                         query=within(self.query_start, self.query_end), bos=bos,
                         prediction=pos == self.pred_pos[:, None], padding=pos > self.pred_pos[:, None])

    def role_of_positions(self, n_pos: int) -> Int[Tensor, "batch pos"]:
        """Role id at every position (:data:`ROLE_NAMES`): 0 other (separators, padding), 1 subject, 2 answer,
        3 query, 4 BOS."""
        m = self.span_masks(n_pos)
        roles = torch.zeros(self.n_examples, n_pos, dtype=torch.long, device=self.query_end.device)
        roles[m.subject.any(1)] = 1
        roles[m.answer.any(1)] = 2
        roles[m.query] = 3
        roles[m.bos] = 4
        return roles


class SpanMasks(NamedTuple):
    """Boolean masks of a layout's spans (:meth:`Layout.span_masks`)."""

    subject: Bool[Tensor, "batch pair pos"]  # span of s_i
    answer: Bool[Tensor, "batch pair pos"]  # span of a_i
    query: Bool[Tensor, "batch pos"]  # span of s_q
    bos: Bool[Tensor, "batch pos"]  # BOS (all False without one)
    prediction: Bool[Tensor, "batch pos"]  # the prediction position
    padding: Bool[Tensor, "batch pos"]  # right padding after the prediction position

    @property
    def separators(self) -> Bool[Tensor, "batch pos"]:
        """Every real position outside the roles (template text such as ``": "`` and newlines)."""
        return ~(self.subject.any(1) | self.answer.any(1) | self.query | self.bos | self.padding)


# ------------------------------------------------------- the first release's names (icr_interp._moved)
def _old_name(old: str) -> property:
    return property(lambda self: getattr(self, moved_attr("Layout", old)),
                    doc=f"Deprecated spelling of ``{MOVED_ATTRS['Layout'][old].rpartition('.')[2]}``.")


for _old in MOVED_ATTRS["Layout"]:
    setattr(Layout, _old, _old_name(_old))

_dataclass_init = Layout.__init__


@functools.wraps(_dataclass_init)
def _init(self, *args, **kwargs) -> None:
    """The dataclass constructor, accepting the first release's keywords (``subject_pos=``) with a warning."""
    for old in [name for name in kwargs if name in MOVED_ATTRS["Layout"]]:
        kwargs[moved_attr("Layout", old)] = kwargs.pop(old)
    _dataclass_init(self, *args, **kwargs)


Layout.__init__ = _init
