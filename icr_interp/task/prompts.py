"""In-context factual recall (IC-recall) prompts and their corruptions.

A prompt is ``[BOS, s_1, a_1, ..., s_k, a_k, s_q]``: k context pairs produced by a
hidden relation r (``a_i = a*(s_i, r)``), then a query subject; the target is
``a*(s_q, r)``.  Subjects in a prompt are distinct.  Every batch carries its
*layout* -- the token span of each s_i, a_i, the query, BOS, and the prediction
position, for every example -- so analyses never guess positions.  Here every
span is one token and the prediction position is the query's; text prompts for
pretrained LMs (:mod:`icr_interp.task.text`) use the same
:class:`~icr_interp.task.layout.Layout` with multi-token spans and the prediction
position after the query.

A prompt's relation is drawn uniformly over the relations that know at least
k + 1 subjects (:attr:`ICRecallTask.relation_weights`), then k + 1 distinct
subjects uniformly among those the relation knows.

Corruptions separate the two jobs the model does:

* ``"relation"``: same subjects (context and query), answers from another
  relation, uniformly among those that know all k + 1 subjects -- changes what
  relation inference must conclude;
* ``"query"``: same context, another query subject, uniformly among the
  subjects the relation knows outside the prompt -- changes only the lookup.

On a partial knowledge base some prompts have no relation swap (no second
relation knows all their subjects).  :meth:`ICRecallTask.corrupt_pairs` is the
one place analyses get their clean/corrupted pairs: it drops such prompts from
both batches and reports how many (a ValueError only if none is left).  Factual-recall
prompts ``[BOS, s, <r>]`` (target ``a*(s, r)``) come from the same knowledge base.
"""

import warnings
from dataclasses import replace

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from icr_interp.task import sampling as S
from icr_interp.task.batch import Batch, CorruptedPairs
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.layout import ROLE_NAMES, Layout, SpanMasks  # noqa: F401 (re-exported: their first home)
from icr_interp.task.protocol import describe
from icr_interp.task.vocab import Vocabulary

CORRUPTIONS = ("relation", "query")


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
        self._usable = S.usable_relations(kb.table, n_pairs + 1)
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
        return S.relation_weights(self.kb.n_relations, self._usable)

    # ------------------------------------------------------------ geometry
    @property
    def n_ctx(self) -> int:
        """Prompt length."""
        return 2 * self.n_pairs + 1 + int(self.bos)

    def config(self) -> dict:
        return dict(n_pairs=self.n_pairs, bos=self.bos)

    def __repr__(self) -> str:  # one line: the settings (config(), dicts by size), then the knowledge base
        return describe(self)

    def layout(self, batch_size: int) -> Layout:
        """Layout of the fixed prompt format, repeated for every example."""
        off = int(self.bos)
        pairs = torch.arange(self.n_pairs)
        rep = lambda t: t.expand(batch_size, *t.shape).clone()  # noqa: E731
        return Layout(
            subject_end=rep(off + 2 * pairs),
            answer_end=rep(off + 2 * pairs + 1),
            query_end=torch.full((batch_size,), self.n_ctx - 1),
            bos_pos=torch.full((batch_size,), 0 if self.bos else -1),
        )

    # ------------------------------------------------------------- sample
    def sample(self, batch_size: int, seed: int | None = None, *, generator: torch.Generator | None = None,
               device: str | torch.device = "cpu") -> Batch:
        """Sample prompts: a usable relation, k + 1 distinct subjects with facts under it (0: an empty batch)."""
        S.check_count(batch_size)
        gen = S.generator(seed, generator)
        relations = self._usable[torch.randint(len(self._usable), (batch_size,), generator=gen)]
        draws = [S.distinct_subjects(self.kb.table, int(r), self.n_pairs + 1, gen) for r in relations]
        subjects = torch.stack(draws) if batch_size else torch.zeros(0, self.n_pairs + 1, dtype=torch.long)
        return self._build(relations, subjects[:, :-1], subjects[:, -1]).to(device)

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
    def corruptible(self, batch: Batch, kind: str) -> Bool[Tensor, " batch"]:
        """Which prompts of ``batch`` have a corruption of ``kind`` (see :meth:`corrupt`)."""
        return corruption_options(self.kb.table, batch.to("cpu"), _check_kind(kind)).any(1).to(batch.tokens.device)

    def corrupt(self, batch: Batch, kind: str, seed: int | None = None, *,
                generator: torch.Generator | None = None) -> Batch:
        """The corrupted counterpart of ``batch`` (same layout, same device).

        ``kind="relation"``: same subjects, answers from another relation, drawn
        uniformly among the relations that know all the prompt's subjects (query
        included) and change both the prompt and the target.  ``kind="query"``:
        same context, another query subject, drawn uniformly among the subjects
        its relation knows that are not in the prompt and have another answer.
        A swap that left the prompt or the target as it was would measure nothing.
        A prompt without such an alternative is an error here;
        :meth:`corrupt_pairs` drops those prompts instead.
        """
        _check_kind(kind)
        gen = S.generator(seed, generator)
        device = batch.tokens.device
        b = batch.to("cpu")
        if len(b) == 0:
            return batch
        options = corruption_options(self.kb.table, b, kind)  # [batch relation] or [batch subject]
        if not options.any(1).all():
            need = ("a second relation that knows the prompt's subjects and changes its answers" if kind == "relation"
                    else "a spare subject with another answer under the prompt's relation")
            raise ValueError(f"{kind} corruption needs {need}; {int((~options.any(1)).sum())} of {len(b)} prompts "
                             f"have none (task.corrupt_pairs drops them)")
        new = torch.stack([S.draw(options[i], gen) for i in range(len(b))])
        out = self._build(new, b.subjects, b.query) if kind == "relation" else \
            self._build(b.relations, b.subjects, new)
        return replace(out, layout=b.layout).to(device)

    def corrupt_pairs(self, batch: Batch, kind: str, seed: int | None = None, *,
                      generator: torch.Generator | None = None) -> "CorruptedPairs":
        """Clean and corrupted batches, restricted to the prompts that have a corruption of ``kind``.

        Prompts without one (:meth:`corruptible`; on a partial knowledge base a
        relation swap needs a second relation knowing every subject of the
        prompt) are dropped from both batches, with a warning giving their
        number; if no prompt has one, a one-line ValueError.  On a batch where
        every prompt has one, ``corrupted`` equals ``corrupt(batch, kind, seed)``.
        """
        gen = S.generator(seed, generator)
        keep = self.corruptible(batch, kind)
        n_dropped = int((~keep).sum())
        if len(batch) and n_dropped == len(batch):
            raise ValueError(f"no prompt of {len(batch)} has a {kind} corruption: "
                             + ("no second relation knows all the subjects of any prompt and changes its answers"
                                if kind == "relation" else
                                "no prompt's relation knows a subject outside the prompt with another answer"))
        if n_dropped:
            warnings.warn(f"{n_dropped} of {len(batch)} prompts have no {kind} corruption and are dropped "
                          f"(clean and corrupted; {len(batch) - n_dropped} kept)", UserWarning, stacklevel=2)
            batch = batch[keep]
        return CorruptedPairs(batch, self.corrupt(batch, kind, generator=gen), n_dropped)

    # ------------------------------------------------------ factual recall
    def sample_facts(self, batch_size: int, seed: int | None = None, *,
                     generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Factual-recall examples with an explicit relation: (subject, relation, answer-token) ids.

        As prompts these read ``[BOS, s, <r>] -> a*(s, r)``; the pretrained
        memory is fitted on them (see :mod:`icr_interp.model.memory.pretrained`).
        """
        S.check_count(batch_size)
        gen = S.generator(seed, generator)
        facts = self.kb.triplets()
        rows = facts[torch.randint(len(facts), (batch_size,), generator=gen)]
        return rows[:, 0], rows[:, 1], self.vocab.answer_token(rows[:, 2])

    def fact_prompts(self, subjects: Tensor, relations: Tensor) -> Int[Tensor, "batch 3"]:
        """Token form ``[BOS, s, <r>]`` of factual-recall examples."""
        v = self.vocab
        return torch.stack([torch.full_like(subjects, v.bos), v.subject_token(subjects), v.relation_token(relations)], 1)

    def to_str(self, tokens: Tensor) -> list | str:
        return self.vocab.to_str(tokens)


def corruption_options(table: Int[Tensor, "relation subject"], b: Batch, kind: str) -> Bool[Tensor, "batch option"]:
    """Per prompt of ``b``, the relations (relation swap) or query subjects (query swap) it may be corrupted to.

    ``table``: the knowledge base's ``[relation subject]`` answer ids (-1: unknown) the prompts were drawn from.
    """
    rows = torch.arange(len(b))
    used = torch.cat([b.subjects, b.query[:, None]], dim=1)  # [batch pair+1]
    if kind == "relation":
        ok = (table[:, used] >= 0).all(-1).T.clone()  # [batch relation]: knows every subject of the prompt
        # A swap must change the prompt (some context answer) and the target: capital <-> largest city
        # over cities that are both would patch a prompt onto itself.
        shown = table[b.relations[:, None], b.subjects]  # [batch pair]
        ok &= (table[:, b.subjects] != shown[None]).any(-1).T
        ok &= table[:, b.query].T != table[b.relations, b.query][:, None]
    else:
        ok = (table[b.relations] >= 0).clone()  # [batch subject]: known under the prompt's relation
        ok[rows[:, None], used] = False
        ok &= table[b.relations] != table[b.relations, b.query][:, None]  # another target (not Germany for France)
    return ok


def _check_kind(kind: str) -> str:
    if kind not in CORRUPTIONS:
        raise ValueError(f"corruption kind must be one of {CORRUPTIONS}, got {kind!r}")
    return kind
