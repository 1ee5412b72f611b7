"""Token vocabulary of a knowledge base: ids <-> strings, grouped by kind.

Ids are laid out as ``[BOS, subjects..., answers..., relations...]``.  Subject
and answer tokens are disjoint, so attention can tell a subject slot from an
answer slot by the token itself (positions tell it too).  Relation tokens are
used only by factual-recall prompts, where the relation is explicit.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Int
from torch import Tensor

from icr_interp.task.tokens import check_token_ids
from icr_interp.task.knowledge import KnowledgeBase

BOS = "<bos>"


@dataclass(frozen=True)
class Vocabulary:
    """Where each kind of token starts in the id space."""

    n_subjects: int  # number of subject tokens
    n_answers: int  # number of answer tokens
    n_relations: int  # number of relation tokens
    names: tuple[str, ...]  # string of every token id
    bos: ClassVar[int] = 0  # id of BOS: always the first token

    @classmethod
    def from_kb(cls, kb: KnowledgeBase) -> "Vocabulary":
        subjects = set(kb.subjects)  # a set: the membership test runs once per answer (10^4 answers at 10^5 facts)
        names = (BOS, *kb.subjects, *(f"{a}" if a not in subjects else f"{a}'" for a in kb.answers),
                 *(f"<{r}>" for r in kb.relations))
        if len(set(names)) != len(names):
            # Names from a CSV may collide across kinds; tag them so views stay readable.
            names = (BOS, *(f"S:{s}" for s in kb.subjects), *(f"A:{a}" for a in kb.answers),
                     *(f"R:{r}" for r in kb.relations))
        return cls(kb.n_subjects, kb.n_answers, kb.n_relations, names)

    @property
    def size(self) -> int:
        return len(self.names)


    @property
    def subject_offset(self) -> int:
        return 1

    @property
    def answer_offset(self) -> int:
        return 1 + self.n_subjects

    @property
    def relation_offset(self) -> int:
        return 1 + self.n_subjects + self.n_answers

    def subject_token(self, s: Tensor | int) -> Tensor | int:
        return s + self.subject_offset

    def answer_token(self, a: Tensor | int) -> Tensor | int:
        return a + self.answer_offset

    def relation_token(self, r: Tensor | int) -> Tensor | int:
        return r + self.relation_offset

    def answer_tokens(self) -> Int[Tensor, "n_answers"]:
        """Token ids of all answers (the classes a prediction is scored over)."""
        return torch.arange(self.n_answers) + self.answer_offset

    def to_str(self, tokens: Int[Tensor, "*shape"]) -> list | str:
        """Token strings, nested like ``tokens`` (a 0-d tensor gives one string)."""
        if tokens.ndim == 0:
            return self.names[int(tokens)]
        return [self.to_str(t) for t in tokens]

    def check(self, tokens: Tensor) -> None:
        """Raise a one-line ValueError if ``tokens`` holds ids outside the vocabulary (:mod:`icr_interp.task.tokens`'
        one check)."""
        check_token_ids(tokens, self.size, "token ids")
