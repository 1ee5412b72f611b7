"""Associative memories: the MLP that stores (subject, relation, answer) facts.

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

A constructed memory is computed one of three ways, all the same function
(:func:`construct_memory`'s ``impl``; :func:`choose_impl` picks the fastest):
``dense`` weights (:class:`AssociativeMemory`), ``factored`` gathers from the
basis (:class:`FactoredMemory`), or ``sparse`` -- only the neurons that can
fire (:class:`icr_interp.model.memory.sparse.SparseMemory`).
"""

from dataclasses import asdict, dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from icr_interp.model.basis import ResidualBasis
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.model.memory.reads import cancel_direct_path, crosstalk_free, query_readout  # noqa: F401 (re-export)
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
    mixed_crosstalk_free: bool = True  # on a random basis, reads attention cannot disturb (mixed_memory.py)


def vote_scale(coef: Float[Tensor, "... relation"]) -> Float[Tensor, "... 1"]:
    """The mixed memory's normalisation: the factor that makes the strongest relation read
    ``min(1, total vote mass)`` and leaves the others in proportion to their votes.

    ``coef`` are the relation coefficients before normalisation (``gain * post @ votes``); their sum
    is the context's evidence (1 under uniform attention), their ratios say which relation it shows.
    A context with more evidence than that (many firing neurons) no longer overdrives stage II, and a
    fully attended but ambiguous one (votes split) still reaches it (docs/theory.md §2b).
    """
    return coef.sum(-1, keepdim=True).clamp_max(1.0) / coef.amax(-1, keepdim=True).clamp_min(1e-6)


class AssociativeMemory(nn.Module):
    """Two-stage associative memory (see module docstring)."""

    def __init__(self, d_model: int, n_rel_neurons: int, n_neurons: int, construction: str):
        super().__init__()
        self.construction = construction
        self.W_rel_in = nn.Parameter(torch.zeros(d_model, n_rel_neurons))
        self.b_rel_in = nn.Parameter(torch.zeros(n_rel_neurons))
        self.W_rel_out = nn.Parameter(torch.zeros(n_rel_neurons, d_model))
        self.W_in = nn.Parameter(torch.zeros(d_model, n_neurons))
        self.b_in = nn.Parameter(torch.zeros(n_neurons))
        self.W_out = nn.Parameter(torch.zeros(n_neurons, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        self.hook_rel_pre = HookPoint()  # [batch, pos, n_rel_neurons]
        self.hook_rel_post = HookPoint()  # [batch, pos, n_rel_neurons]
        self.hook_relation = HookPoint()  # [batch, pos, d_model]: the inferred relation vector
        self.hook_pre = HookPoint()  # [batch, pos, n_neurons]
        self.hook_post = HookPoint()  # [batch, pos, n_neurons]
        # Vote normalisation (the mixed construction, see vote_scale); off for the other memories.
        self.normalise = False
        self.register_buffer("rel_votes", None, persistent=False)  # [n_rel_neurons relation] gain * votes, if normalising

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        relation = self.hook_relation(self.infer_relation(x))
        pre = self.hook_pre(einops.einsum(x + relation, self.W_in, "b p d, d n -> b p n") + self.b_in)
        post = self.hook_post(F.relu(pre))
        return einops.einsum(post, self.W_out, "b p n, n d -> b p d") + self.b_out

    def infer_relation(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Stage I: the relation vector the attended context implies."""
        pre = self.hook_rel_pre(einops.einsum(x, self.W_rel_in, "b p d, d n -> b p n") + self.b_rel_in)
        post = self.hook_rel_post(F.relu(pre))
        relation = einops.einsum(post, self.W_rel_out, "b p n, n d -> b p d")
        if self.normalise:
            relation = relation * vote_scale(post @ self.rel_votes)
        return relation

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[1]


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


IMPLS = ("dense", "factored", "sparse")  # how a constructed memory is computed (same function)
# choose_impl's rule, measured with benchmarks/bench_memory.py ([4] crossover, memory forward +
# backward at 64 query rows; docs/results.md ("Sparse memory")): up to N * d = 2^19 the three
# implementations are within ~2 ms of each other (the sparse path's ~40 small kernels cost a fixed
# few ms), from 2^19 on the sparse memory is fastest and its lead grows with N (1.6x over factored
# and 8x over dense at 2^23, 8x over factored at 10^6 facts).  Small models stay dense: real
# nn.Parameter weights, and the reference model's pinned numbers unchanged.
DENSE_MAX_WEIGHTS = 2**18


def choose_impl(requested: str, n_facts: int, d_model: int) -> str:
    """The implementation ``requested`` means: ``"auto"`` picks the fastest for this size.

    Args:
        requested: ``"auto"``, ``"dense"``, ``"factored"`` or ``"sparse"``.
        n_facts: stored triplets (stage-II neurons).
        d_model: residual width.
    """
    if requested not in ("auto", *IMPLS):
        raise ValueError(f"memory_impl must be auto, {', '.join(IMPLS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "dense" if n_facts * d_model <= DENSE_MAX_WEIGHTS else "sparse"


def construct_memory(construction: str, kb: KnowledgeBase, vocab: Vocabulary, basis: ResidualBasis,
                     n_pairs: int, scales: MemoryScales = MemoryScales(), factored: bool = False,
                     impl: str | None = None) -> nn.Module:
    """Write a memory in closed form.

    Args:
        construction: ``"pair"`` or ``"answer"``.
        kb: the facts to store.
        vocab: token ids of the knowledge base.
        basis: residual-stream directions the weights are written in.
        n_pairs: context pairs per prompt (sets the stage-I gain).
        scales: thresholds and gains.
        factored: old spelling of ``impl="factored"`` (ignored when ``impl`` is given).
        impl: ``"dense"`` (:class:`AssociativeMemory`, weights O(n_facts * d_model)),
            ``"factored"`` (:class:`FactoredMemory`, O(vocab * d_model + n_facts)) or
            ``"sparse"`` (:class:`~icr_interp.model.memory.sparse.SparseMemory`: the factored
            weights, evaluated only at neurons that can fire); all compute the same function.
    """
    impl = impl or ("factored" if factored else "dense")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    table = memory_table(construction, kb, vocab, n_pairs, scales)
    subjects = vocab.subject_token(torch.arange(kb.n_subjects))
    fix = crosstalk_free(basis, subjects) if table.normalise and scales.mixed_crosstalk_free else None
    basis = fix[0] if fix else basis  # mixed on a random basis: crosstalk-free reads (mixed_memory.py)
    if impl == "sparse":
        from icr_interp.model.memory.sparse import SparseMemory  # it builds on FactoredMemory below

        memory = SparseMemory(table, basis, construction)
    elif impl == "factored":
        memory = FactoredMemory(table, basis, construction)
    else:
        memory = AssociativeMemory(basis.d_model, len(table.key_a), len(table.subject), construction)
        with torch.no_grad():
            memory.W_rel_in.copy_(_keys(basis.context, table.key_a, table.key_b).T)
            memory.b_rel_in.copy_(-table.threshold)
            memory.W_rel_out.copy_(table.gain * table.votes @ basis.relation)
            memory.normalise = table.normalise
            if table.normalise:
                memory.rel_votes = table.gain * table.votes
            memory.W_in.copy_((basis.token[table.subject] + basis.relation[table.relation_id]).T)
            memory.b_in.fill_(-table.lookup_threshold)
            memory.W_out.copy_(table.logit_gain * basis.output[table.answer])
    memory.scales = asdict(scales)
    return cancel_direct_path(memory, fix[1]) if fix else memory


def _keys(directions: Tensor, key_a: Tensor, key_b: Tensor) -> Tensor:
    """``directions[key_a] + directions[key_b]`` with ``key_b = -1`` read as nothing."""
    padded = torch.cat([directions, torch.zeros(1, directions.shape[1])])
    return padded[key_a] + padded[torch.where(key_b < 0, len(directions), key_b)]


class FactoredMemory(nn.Module):
    """A constructed memory computed from its :class:`MemoryTable` instead of dense weights.

    Every key is a sum of basis directions, so ``x @ W_rel_in`` is a gather from
    ``x @ context.T`` and ``x @ W_in`` a gather from ``x @ token.T`` and
    ``x @ relation.T``; outputs scatter into answers before one small matmul.
    Same function and hook points as :class:`AssociativeMemory` (a test checks
    equality); the dense weights are available as properties for analyses.
    """

    def __init__(self, table: MemoryTable, basis: ResidualBasis, construction: str):
        super().__init__()
        self.construction = construction
        self.gain, self.normalise = table.gain, table.normalise
        self.lookup_threshold, self.logit_gain = table.lookup_threshold, table.logit_gain
        n_vocab = basis.context.shape[0]
        for name, value in dict(context=basis.context, token=basis.token, relation=basis.relation,
                                output=basis.output, key_a=table.key_a,
                                key_b=torch.where(table.key_b < 0, n_vocab, table.key_b), votes=table.votes,
                                subject=table.subject, relation_id=table.relation_id, answer=table.answer).items():
            self.register_buffer(name, value.clone())
        # Rebuilt from the table at build time (not saved: checkpoints keep the first release's keys).
        self.register_buffer("threshold", table.threshold.clone().to(basis.context.dtype), persistent=False)
        self.hook_rel_pre = HookPoint()  # [batch, pos, n_rel_neurons]
        self.hook_rel_post = HookPoint()  # [batch, pos, n_rel_neurons]
        self.hook_relation = HookPoint()  # [batch, pos, d_model]
        self.hook_pre = HookPoint()  # [batch, pos, n_neurons]
        self.hook_post = HookPoint()  # [batch, pos, n_neurons]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        relation = self.hook_relation(self.infer_relation(x))
        return self.lookup(x + relation)

    def lookup(self, y: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Stage II: the answer directions the (subject, relation vector) input ``y`` recalls."""
        pre = (y @ self.token.T)[..., self.subject] + (y @ self.relation.T)[..., self.relation_id]
        post = self.hook_post(F.relu(self.hook_pre(pre - self.lookup_threshold)))
        per_token = torch.zeros(*post.shape[:-1], self.output.shape[0], dtype=post.dtype, device=post.device)
        per_token.index_add_(-1, self.answer, post)
        return self.logit_gain * per_token @ self.output

    def infer_relation(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Stage I: the relation vector the attended context implies."""
        c = F.pad(x @ self.context.T, (0, 1))  # [batch pos vocab+1]; the pad column reads "no token"
        pre = self.hook_rel_pre(c[..., self.key_a] + c[..., self.key_b] - self.threshold)
        post = self.hook_rel_post(F.relu(pre))
        return self.relation_vector(post @ self.votes)

    def relation_vector(self, coef: Float[Tensor, "... relation"]) -> Float[Tensor, "... d_model"]:
        """The relation vector of summed votes ``coef = post @ votes``: scaled by the gain and,
        if ``normalise``, by :func:`vote_scale`."""
        coef = self.gain * coef
        if self.normalise:
            coef = coef * vote_scale(coef)
        return coef @ self.relation

    @property
    def d_mlp(self) -> int:
        return len(self.subject)

    # Dense views of the same weights, for weight-based analyses.
    @property
    def W_rel_in(self) -> Tensor:
        return _keys(self.context, self.key_a, torch.where(self.key_b == len(self.context), -1, self.key_b)).T

    @property
    def b_rel_in(self) -> Tensor:
        return -self.threshold

    @property
    def W_rel_out(self) -> Tensor:
        """Before normalisation (``normalise``: the output is rescaled by :func:`vote_scale`)."""
        return self.gain * self.votes @ self.relation

    @property
    def W_in(self) -> Tensor:
        return (self.token[self.subject] + self.relation[self.relation_id]).T

    @property
    def W_out(self) -> Tensor:
        return self.logit_gain * self.output[self.answer]


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

