"""Constructed memories in symbolic form: which tokens each neuron reads and writes, and the constructions.

Associative memories: the MLP that stores (subject, relation, answer) facts.

Every memory here is a two-stage ReLU MLP with TransformerLens's MLP contract
(``[batch pos d_model] -> [batch pos d_model]``) and its own hook points::

    stage I  (relation inference): rel = ReLU(x @ W_rel_in + b_rel_in) @ W_rel_out
    stage II (answer lookup):      out = ReLU((x + rel) @ W_in + b_in) @ W_out + b_out

At the query position ``x`` holds the query subject's embedding plus the
context copied there by attention (see :mod:`icr_interp.model.basis`).  Stage I
reads the attended context and writes a *relation vector*; stage II reads
(query subject, relation vector) and writes the answer's unembedding
direction.  Which neurons exist and how they are weighted is the
*construction* (derivations in docs/theory.md):

* ``pair``   -- one stage-I neuron per stored (subject, answer) pair, firing
  only when *both* are attended (threshold between one and two tokens' weight):
  needed when answers are shared across relations;
* ``answer`` -- one stage-I neuron per answer (control for disjoint answer sets,
  where an answer alone reveals its relation);
* ``mixed``  -- some answers reveal their relation, others do not (real facts, partial
  overlap, gaps): answer neurons for private answers, pair neurons for shared ones (a
  threshold per neuron), and a relation vector normalised by :func:`vote_scale` so that
  many firing neurons cannot overdrive stage II (docs/theory.md §2b);
* ``pretrained`` -- same shape, weights fitted by gradient descent on
  factual-recall examples instead of written down (:mod:`icr_interp.model.memory.pretrained`).

Stage II is the same lookup table in every construction: one neuron per fact
(s, r), reading ``token[s] + relation[r]``.
"""

from dataclasses import dataclass

import torch
from torch import Tensor

from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.vocab import Vocabulary

CONSTRUCTIONS = ("pair", "answer", "mixed")
MEMORIES = ("constructed", *CONSTRUCTIONS, "pretrained")


@dataclass(frozen=True)
class MemoryScales:
    """Thresholds and gains of the constructed memories (units: docs/theory.md)."""

    pair_threshold: float = 1.3  # stage-I threshold of a pair neuron, in attended-token weights
    lookup_threshold: float = 1.5  # stage-II threshold: 1 (query subject) + 0.5 relation
    logit_gain: float = 10.0  # answer logit per unit of stage-II activation
    # Mixed construction (docs/theory.md §2b, "The start as a flat optimum").  Stage-II threshold 1 (query
    # subject) + 0.5 relation: the relation vector is normalised (coefficients <= 1), so a relation with under
    # half the strongest one's votes stays silent -- a partly disambiguated context (ratio ~0.3) cannot reach the
    # summed logit of an answer two relations share -- and other subjects' neurons need a 0.5 crosstalk read.
    mixed_lookup_threshold: float = 1.5
    mixed_vote_gain: float = 2.0  # stage-I gain factor: the vote mass reaches 1 at half the uniform evidence
    mixed_logit_gain: float = 15.0  # top stage-II activation is 1 - 0.5, so the top logit stays 7.5 (10 x 0.75)
    mixed_crosstalk_free: bool = True  # on a random basis, reads attention cannot disturb (docs/theory.md §2b)


@dataclass(frozen=True)
class MemoryTable:
    """A constructed memory in symbolic form: which tokens each neuron reads and writes.

    Stage-I neuron n reads ``context[key_a[n]] + context[key_b[n]]`` (``key_b = -1``:
    one token only), fires above ``threshold[n]`` and writes ``gain * votes[n] @ relation``
    (``normalise``: rescaled by :func:`vote_scale`); stage-II neuron m
    reads ``token[subject[m]] + relation[relation_id[m]]`` and writes
    ``logit_gain * output[answer[m]]``.
    """

    key_a: Tensor  # [n_rel_neurons] token id of the first key token
    key_b: Tensor  # [n_rel_neurons] token id of the second key token, -1 if none
    votes: Tensor  # [n_rel_neurons relation] relation weights of each stage-I neuron (rows sum to 1)
    threshold: Tensor  # [n_rel_neurons] stage-I threshold of each neuron
    gain: float  # stage-I output gain
    subject: Tensor  # [n_neurons] subject token of each stage-II neuron
    relation_id: Tensor  # [n_neurons] relation of each stage-II neuron
    answer: Tensor  # [n_neurons] answer token each stage-II neuron writes
    lookup_threshold: float  # stage-II threshold
    logit_gain: float  # stage-II output gain
    normalise: bool = False  # rescale the relation vector by vote_scale (mixed)


def memory_table(construction: str, kb: KnowledgeBase, vocab: Vocabulary, n_pairs: int,
                 scales: MemoryScales = MemoryScales()) -> MemoryTable:
    """The neurons of a constructed memory (see module docstring and docs/theory.md)."""
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"construction must be one of {CONSTRUCTIONS}, got {construction!r}")
    facts = kb.triplets()  # [fact (s, r, a)]
    private = _private_answers(kb)[facts[:, 2]]  # [fact] the answer reveals the relation
    kind = dict(pair=torch.zeros_like(private), answer=torch.ones_like(private), mixed=private)[construction]
    # The mixed memory splits an ambiguous pair's vote by each relation's likelihood of showing it
    # (1 / facts it stores: prompts draw relations uniformly, then subjects), which breaks ties
    # between relations as the Bayes-optimal prediction does; pair keeps its equal split.
    n_facts = torch.bincount(facts[:, 1], minlength=kb.n_relations).clamp_min(1).float()
    pairs = _pair_neurons(facts[~kind], kb.n_relations, vocab, 1.0 / n_facts if construction == "mixed" else None)
    answers = _answer_neurons(facts[kind], kb.n_relations, vocab)
    key_a, key_b, votes = (torch.cat([p, a]) for p, a in zip(pairs, answers))
    # Stage I fires by (weight of its tokens) - threshold; an answer neuron sees one
    # token, so its threshold is one token lower (docs/theory.md, section 2).
    threshold = torch.cat([torch.full((len(pairs[0]),), scales.pair_threshold),
                           torch.full((len(answers[0]),), scales.pair_threshold - 1.0)])
    mixed = construction == "mixed"
    return MemoryTable(
        key_a=key_a, key_b=key_b, votes=votes, threshold=threshold,
        # Uniform attention over the context (weight 1 per token) gives a relation
        # vector of norm 1 (k pairs, each firing 2 - pair_threshold).
        gain=(scales.mixed_vote_gain if mixed else 1.0) / (n_pairs * (2.0 - scales.pair_threshold)),
        subject=vocab.subject_token(facts[:, 0]), relation_id=facts[:, 1], answer=vocab.answer_token(facts[:, 2]),
        lookup_threshold=scales.mixed_lookup_threshold if mixed else scales.lookup_threshold,
        logit_gain=scales.mixed_logit_gain if mixed else scales.logit_gain, normalise=mixed,
    )


def _private_answers(kb: KnowledgeBase) -> Tensor:
    """[answer] whether exactly one relation uses the answer (so it reveals the relation)."""
    owners = torch.zeros(kb.n_answers, kb.n_relations)
    facts = kb.triplets()
    owners[facts[:, 2], facts[:, 1]] = 1.0
    return owners.sum(1) == 1


def _pair_neurons(facts: Tensor, n_relations: int, vocab: Vocabulary,
                  weight: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One neuron per distinct stored (s, a) pair; it votes for every relation giving s -> a.

    An ambiguous pair splits its vote equally, or in proportion to ``weight`` ([relation]) if given.
    """
    pairs, inverse = torch.unique(facts[:, [0, 2]], dim=0, return_inverse=True)
    votes = torch.zeros(len(pairs), n_relations).index_put_((inverse, facts[:, 1]), torch.tensor(1.0), accumulate=True)
    if weight is not None:
        votes = votes * weight
    votes = votes / votes.sum(1, keepdim=True)  # an ambiguous pair splits its vote
    return vocab.subject_token(pairs[:, 0]), vocab.answer_token(pairs[:, 1]), votes


def _answer_neurons(facts: Tensor, n_relations: int, vocab: Vocabulary) -> tuple[Tensor, Tensor, Tensor]:
    """One neuron per used answer; it votes for the relations that use it."""
    used, inverse = torch.unique(facts[:, 2], return_inverse=True)
    owners = torch.zeros(len(used), n_relations)
    owners[inverse, facts[:, 1]] = 1.0
    votes = owners / owners.sum(1, keepdim=True)
    return vocab.answer_token(used), torch.full_like(used, -1), votes


def pick_construction(kb: KnowledgeBase) -> str:
    """The construction ``memory="constructed"`` means for this knowledge base.

    ``answer`` when every answer reveals its relation, ``pair`` when none does,
    ``mixed`` when some do and some do not.
    """
    private = _private_answers(kb)[torch.unique(kb.triplets()[:, 2])]
    return "answer" if bool(private.all()) else "pair" if not bool(private.any()) else "mixed"
