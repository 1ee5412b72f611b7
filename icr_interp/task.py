"""In-context factual recall (IC-recall) prompts and their corruptions.

A prompt is ``[BOS, s_1, a_1, ..., s_k, a_k, s_q]``: k context pairs produced by a
hidden relation r (``a_i = a*(s_i, r)``), then a query subject; the target is
``a*(s_q, r)``.  Subjects in a prompt are distinct.  Every batch carries its
*layout* -- the position of each s_i, a_i, the query and BOS for every example
-- so analyses never guess positions.

Corruptions separate the two jobs the model does:

* ``"relation"``: same subjects (context and query), answers from another
  relation -- changes what relation inference must conclude;
* ``"query"``: same context, another query subject -- changes only the lookup.

Factual-recall prompts ``[BOS, s, <r>]`` (explicit relation token, target
``a*(s, r)``) come from the same knowledge base.
"""

import warnings
from dataclasses import dataclass, fields, replace

import torch
from jaxtyping import Int
from torch import Tensor

from icr_interp.knowledge import KnowledgeBase
from icr_interp.vocab import Vocabulary

CORRUPTIONS = ("relation", "query")


@dataclass(frozen=True)
class Layout:
    """Per-example positions of each role in a prompt (-1: role absent)."""

    subject_pos: Int[Tensor, "batch pair"]  # position of s_i
    answer_pos: Int[Tensor, "batch pair"]  # position of a_i
    query_pos: Int[Tensor, " batch"]  # position of s_q
    bos_pos: Int[Tensor, " batch"]  # position of BOS, -1 without one

    def to(self, device) -> "Layout":
        return Layout(*(getattr(self, f.name).to(device) for f in fields(self)))

    def role_of_positions(self, n_pos: int) -> Int[Tensor, "batch pos"]:
        """Role id at every position: 0 other, 1 subject, 2 answer, 3 query, 4 BOS."""
        roles = torch.zeros(self.query_pos.shape[0], n_pos, dtype=torch.long, device=self.query_pos.device)
        roles.scatter_(1, self.subject_pos, 1)
        roles.scatter_(1, self.answer_pos, 2)
        roles.scatter_(1, self.query_pos[:, None], 3)
        has_bos = self.bos_pos >= 0
        roles[has_bos, self.bos_pos[has_bos]] = 4
        return roles


ROLE_NAMES = ("other", "subject", "answer", "query", "bos")


@dataclass(frozen=True)
class Batch:
    """A batch of IC-recall prompts with targets and layout."""

    tokens: Int[Tensor, "batch pos"]  # prompt token ids
    answers: Int[Tensor, " batch"]  # target token id a*(s_q, r)
    relations: Int[Tensor, " batch"]  # hidden relation id
    subjects: Int[Tensor, "batch pair"]  # context subject ids s_i (knowledge-base ids)
    query: Int[Tensor, " batch"]  # query subject id s_q
    layout: Layout  # where each role sits

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device) -> "Batch":
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "layout"}
        return Batch(**moved, layout=self.layout.to(device))

    def __getitem__(self, idx) -> "Batch":
        """Sub-batch by index, slice or mask (an integer index keeps a batch of one)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        sub = {f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "layout"}
        lay = Layout(*(getattr(self.layout, f.name)[idx] for f in fields(Layout)))
        return Batch(**sub, layout=lay)


class ICRecallTask:
    """IC-recall prompts over a knowledge base.

    Args:
        kb: the knowledge base.
        n_pairs: number k of context pairs (>= 1).
        bos: whether prompts start with a BOS token (an attention sink).
    """

    def __init__(self, kb: KnowledgeBase, n_pairs: int = 4, bos: bool = True):
        if not isinstance(n_pairs, int) or isinstance(n_pairs, bool) or n_pairs < 1:
            raise ValueError(f"n_pairs must be an integer >= 1, got {n_pairs!r}")
        if not isinstance(bos, bool):
            raise ValueError(f"bos must be True or False, got {bos!r}")
        self.kb, self.n_pairs, self.bos = kb, n_pairs, bos
        self.vocab = Vocabulary.from_kb(kb)
        known = kb.table >= 0  # [relation subject]
        self._usable = torch.nonzero(known.sum(1) >= n_pairs + 1).flatten()
        if len(self._usable) == 0:
            raise ValueError(f"no relation has the {n_pairs + 1} subjects a prompt with k={n_pairs} needs")
        n_facts = known.sum(1)
        sparse = [kb.relations[r] for r in range(kb.n_relations) if 0 < int(n_facts[r]) < n_pairs + 1]
        if sparse:
            shown = ", ".join(sparse[:5]) + (f" and {len(sparse) - 5} more" if len(sparse) > 5 else "")
            warnings.warn(f"{len(sparse)} relation(s) know fewer than the {n_pairs + 1} subjects a prompt with "
                          f"k={n_pairs} needs and are never sampled: {shown}", UserWarning, stacklevel=2)

    @property
    def relation_weights(self) -> Tensor:
        """How prompts draw their relation: uniformly over the relations that can fill k + 1 distinct subjects.

        ``[relation]`` probabilities (0 for a relation too sparse for k pairs).
        """
        weights = torch.zeros(self.kb.n_relations)
        weights[self._usable] = 1.0 / len(self._usable)
        return weights

    # ------------------------------------------------------------ geometry
    @property
    def n_ctx(self) -> int:
        """Prompt length."""
        return 2 * self.n_pairs + 1 + int(self.bos)

    def config(self) -> dict:
        return dict(n_pairs=self.n_pairs, bos=self.bos)

    def layout(self, batch_size: int) -> Layout:
        """Layout of the fixed prompt format, repeated for every example."""
        off = int(self.bos)
        pairs = torch.arange(self.n_pairs)
        rep = lambda t: t.expand(batch_size, *t.shape).clone()  # noqa: E731
        return Layout(
            subject_pos=rep(off + 2 * pairs),
            answer_pos=rep(off + 2 * pairs + 1),
            query_pos=torch.full((batch_size,), self.n_ctx - 1),
            bos_pos=torch.full((batch_size,), 0 if self.bos else -1),
        )

    # ------------------------------------------------------------- sample
    def sample(self, batch_size: int, seed: int | None = None, *, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> Batch:
        """Sample prompts: a usable relation, k + 1 distinct subjects with facts under it (0: an empty batch)."""
        _check_count(batch_size)
        gen = _generator(seed, generator)
        relations = self._usable[torch.randint(len(self._usable), (batch_size,), generator=gen)]
        subjects = torch.stack([self._distinct_subjects(int(r), gen) for r in relations]) if batch_size else \
            torch.zeros(0, self.n_pairs + 1, dtype=torch.long)
        return self._build(relations, subjects[:, :-1], subjects[:, -1]).to(device)

    def _distinct_subjects(self, relation: int, gen: torch.Generator) -> Tensor:
        pool = torch.nonzero(self.kb.table[relation] >= 0).flatten()
        return pool[torch.randperm(len(pool), generator=gen)[: self.n_pairs + 1]]

    def _build(self, relations: Tensor, subjects: Tensor, query: Tensor) -> Batch:
        """Assemble tokens, targets and layout from relation and subject ids."""
        v, table = self.vocab, self.kb.table
        ctx_answers = table[relations[:, None], subjects]  # [batch pair]
        target = table[relations, query]
        if (ctx_answers < 0).any() or (target < 0).any():
            raise ValueError("prompt uses a fact the knowledge base does not have")
        pairs = torch.stack([v.subject_token(subjects), v.answer_token(ctx_answers)], dim=-1).flatten(1)
        parts = [torch.full((len(relations), 1), v.bos)] if self.bos else []
        tokens = torch.cat([*parts, pairs, v.subject_token(query)[:, None]], dim=1)
        return Batch(tokens=tokens, answers=v.answer_token(target), relations=relations.clone(),
                     subjects=subjects.clone(), query=query.clone(), layout=self.layout(len(relations)))

    # ------------------------------------------------------------ corrupt
    def corrupt(self, batch: Batch, kind: str, seed: int | None = None, *,
                generator: torch.Generator | None = None) -> Batch:
        """The corrupted counterpart of ``batch`` (same layout, same device).

        ``kind="relation"``: same subjects, answers from another relation (one
        that knows all of them).  ``kind="query"``: same context, another query
        subject not in the context.
        """
        if kind not in CORRUPTIONS:
            raise ValueError(f"corruption kind must be one of {CORRUPTIONS}, got {kind!r}")
        gen = _generator(seed, generator)
        device = batch.tokens.device
        b = batch.to("cpu")
        if len(b) == 0:
            return batch
        if kind == "relation":
            new_rel = torch.stack([self._other_relation(b, i, gen) for i in range(len(b))])
            out = self._build(new_rel, b.subjects, b.query)
        else:
            new_q = torch.stack([self._other_query(b, i, gen) for i in range(len(b))])
            out = self._build(b.relations, b.subjects, new_q)
        return replace(out, layout=b.layout).to(device)

    def _other_relation(self, b: Batch, i: int, gen: torch.Generator) -> Tensor:
        needed = torch.cat([b.subjects[i], b.query[i : i + 1]])
        ok = (self.kb.table[:, needed] >= 0).all(1)
        ok[b.relations[i]] = False
        choices = torch.nonzero(ok).flatten()
        if len(choices) == 0:
            raise ValueError("relation corruption needs a second relation that knows the prompt's subjects")
        return choices[torch.randint(len(choices), (), generator=gen)]

    def _other_query(self, b: Batch, i: int, gen: torch.Generator) -> Tensor:
        ok = self.kb.table[b.relations[i]] >= 0
        ok[b.subjects[i]] = False
        ok[b.query[i]] = False
        choices = torch.nonzero(ok).flatten()
        if len(choices) == 0:
            raise ValueError("query corruption needs a spare subject under the prompt's relation")
        return choices[torch.randint(len(choices), (), generator=gen)]

    # ------------------------------------------------------ factual recall
    def sample_facts(self, batch_size: int, seed: int | None = None, *,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Factual-recall examples with an explicit relation: (subject, relation, answer-token) ids.

        As prompts these read ``[BOS, s, <r>] -> a*(s, r)``; the pretrained
        memory is fitted on them (see :mod:`icr_interp.pretrain`).
        """
        _check_count(batch_size)
        gen = _generator(seed, generator)
        facts = self.kb.triplets()
        rows = facts[torch.randint(len(facts), (batch_size,), generator=gen)]
        return rows[:, 0], rows[:, 1], self.vocab.answer_token(rows[:, 2])

    def fact_prompts(self, subjects: Tensor, relations: Tensor) -> Int[Tensor, "batch 3"]:
        """Token form ``[BOS, s, <r>]`` of factual-recall examples."""
        v = self.vocab
        return torch.stack([torch.full_like(subjects, v.bos), v.subject_token(subjects), v.relation_token(relations)], 1)

    def to_str(self, tokens: Tensor) -> list | str:
        return self.vocab.to_str(tokens)


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    """An explicit generator: the one given, or a fresh one seeded with ``seed``."""
    if generator is not None:
        return generator
    if seed is None:
        raise ValueError("pass a seed or a torch.Generator: sampling is always explicit")
    return torch.Generator().manual_seed(seed)


def _check_count(batch_size) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 0:
        raise ValueError(f"batch_size must be an integer >= 0, got {batch_size!r}")
