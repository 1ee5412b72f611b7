"""Associative memories: the MLP that stores (subject, relation, answer) facts.

Every memory here is a two-stage ReLU MLP with TransformerLens's MLP contract
(``[batch pos d_model] -> [batch pos d_model]``) and its own hook points::

    stage I  (relation inference): rel = ReLU(x @ W_rel_in + b_rel_in) @ W_rel_out
    stage II (answer lookup):      out = ReLU((x + rel) @ W_in + b_in) @ W_out + b_out

At the query position ``x`` holds the query subject's embedding plus the
context copied there by attention (see :mod:`icr_interp.basis`).  Stage I
reads the attended context and writes a *relation vector*; stage II reads
(query subject, relation vector) and writes the answer's unembedding
direction.  Which neurons exist and how they are weighted is the
*construction* (derivations in docs/theory.md):

* ``pair``   -- one stage-I neuron per stored (subject, answer) pair, firing
  only when *both* are attended (threshold between one and two tokens' weight):
  needed when answers are shared across relations;
* ``answer`` -- one stage-I neuron per answer (control for disjoint answer sets,
  where an answer alone reveals its relation);
* ``pretrained`` -- same shape, weights fitted by gradient descent on
  factual-recall examples instead of written down (:mod:`icr_interp.pretrain`).

Stage II is the same lookup table in both constructions: one neuron per fact
(s, r), reading ``token[s] + relation[r]``.

A constructed memory is computed one of three ways, all the same function
(:func:`construct_memory`'s ``impl``; :func:`choose_impl` picks the fastest):
``dense`` weights (:class:`AssociativeMemory`), ``factored`` gathers from the
basis (:class:`FactoredMemory`), or ``sparse`` -- only the neurons that can
fire (:class:`icr_interp.sparse_memory.SparseMemory`).
"""

from dataclasses import asdict, dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from icr_interp.basis import ResidualBasis
from icr_interp.knowledge import KnowledgeBase
from icr_interp.vocab import Vocabulary

CONSTRUCTIONS = ("pair", "answer")
MEMORIES = ("constructed", *CONSTRUCTIONS, "pretrained")


@dataclass(frozen=True)
class MemoryScales:
    """Thresholds and gains of the constructed memories (units: docs/theory.md)."""

    pair_threshold: float = 1.3  # stage-I threshold of a pair neuron, in attended-token weights
    lookup_threshold: float = 1.5  # stage-II threshold: 1 (query subject) + 0.5 relation
    logit_gain: float = 10.0  # answer logit per unit of stage-II activation


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

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        relation = self.hook_relation(self.infer_relation(x))
        pre = self.hook_pre(einops.einsum(x + relation, self.W_in, "b p d, d n -> b p n") + self.b_in)
        post = self.hook_post(F.relu(pre))
        return einops.einsum(post, self.W_out, "b p n, n d -> b p d") + self.b_out

    def infer_relation(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        """Stage I: the relation vector the attended context implies."""
        pre = self.hook_rel_pre(einops.einsum(x, self.W_rel_in, "b p d, d n -> b p n") + self.b_rel_in)
        post = self.hook_rel_post(F.relu(pre))
        return einops.einsum(post, self.W_rel_out, "b p n, n d -> b p d")

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[1]


@dataclass(frozen=True)
class MemoryTable:
    """A constructed memory in symbolic form: which tokens each neuron reads and writes.

    Stage-I neuron n reads ``context[key_a[n]] + context[key_b[n]]`` (``key_b = -1``:
    one token only) and writes ``gain * votes[n] @ relation``; stage-II neuron m
    reads ``token[subject[m]] + relation[relation_id[m]]`` and writes
    ``logit_gain * output[answer[m]]``.
    """

    key_a: Tensor  # [n_rel_neurons] token id of the first key token
    key_b: Tensor  # [n_rel_neurons] token id of the second key token, -1 if none
    votes: Tensor  # [n_rel_neurons relation] relation weights of each stage-I neuron (rows sum to 1)
    threshold: float  # stage-I threshold
    gain: float  # stage-I output gain
    subject: Tensor  # [n_neurons] subject token of each stage-II neuron
    relation_id: Tensor  # [n_neurons] relation of each stage-II neuron
    answer: Tensor  # [n_neurons] answer token each stage-II neuron writes
    lookup_threshold: float  # stage-II threshold
    logit_gain: float  # stage-II output gain


def memory_table(construction: str, kb: KnowledgeBase, vocab: Vocabulary, n_pairs: int,
                 scales: MemoryScales = MemoryScales()) -> MemoryTable:
    """The neurons of a constructed memory (see module docstring and docs/theory.md)."""
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"construction must be one of {CONSTRUCTIONS}, got {construction!r}")
    key_a, key_b, votes = (_pair_neurons if construction == "pair" else _answer_neurons)(kb, vocab)
    facts = kb.triplets()  # [fact (s, r, a)]
    return MemoryTable(
        key_a=key_a, key_b=key_b, votes=votes,
        # Stage I fires by (weight of its tokens) - threshold; the answer neuron sees
        # one token, so its threshold is one token lower (docs/theory.md, section 2).
        threshold=scales.pair_threshold - (construction == "answer"),
        # Uniform attention over the context (weight 1 per token) gives a relation
        # vector of norm 1 (k pairs, each firing 2 - pair_threshold).
        gain=1.0 / (n_pairs * (2.0 - scales.pair_threshold)),
        subject=vocab.subject_token(facts[:, 0]), relation_id=facts[:, 1], answer=vocab.answer_token(facts[:, 2]),
        lookup_threshold=scales.lookup_threshold, logit_gain=scales.logit_gain,
    )


IMPLS = ("dense", "factored", "sparse")  # how a constructed memory is computed (same function)
# choose_impl's rule, measured with benchmarks/bench_memory.py ([4] crossover, memory forward +
# backward at 64 query rows; docs/_drafts/sparse_memory_results.md): up to N * d = 2^19 the three
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
            ``"sparse"`` (:class:`~icr_interp.sparse_memory.SparseMemory`: the factored
            weights, evaluated only at neurons that can fire); all compute the same function.
    """
    impl = impl or ("factored" if factored else "dense")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    table = memory_table(construction, kb, vocab, n_pairs, scales)
    if impl == "sparse":
        from icr_interp.sparse_memory import SparseMemory  # it builds on FactoredMemory below

        memory = SparseMemory(table, basis, construction)
    elif impl == "factored":
        memory = FactoredMemory(table, basis, construction)
    else:
        memory = AssociativeMemory(basis.d_model, len(table.key_a), len(table.subject), construction)
        with torch.no_grad():
            memory.W_rel_in.copy_(_keys(basis.context, table.key_a, table.key_b).T)
            memory.b_rel_in.fill_(-table.threshold)
            memory.W_rel_out.copy_(table.gain * table.votes @ basis.relation)
            memory.W_in.copy_((basis.token[table.subject] + basis.relation[table.relation_id]).T)
            memory.b_in.fill_(-table.lookup_threshold)
            memory.W_out.copy_(table.logit_gain * basis.output[table.answer])
    memory.scales = asdict(scales)
    return memory


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
        self.threshold, self.gain = table.threshold, table.gain
        self.lookup_threshold, self.logit_gain = table.lookup_threshold, table.logit_gain
        n_vocab = basis.context.shape[0]
        for name, value in dict(context=basis.context, token=basis.token, relation=basis.relation,
                                output=basis.output, key_a=table.key_a,
                                key_b=torch.where(table.key_b < 0, n_vocab, table.key_b), votes=table.votes,
                                subject=table.subject, relation_id=table.relation_id, answer=table.answer).items():
            self.register_buffer(name, value.clone())
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
        return self.gain * (post @ self.votes) @ self.relation

    @property
    def d_mlp(self) -> int:
        return len(self.subject)

    # Dense views of the same weights, for weight-based analyses.
    @property
    def W_rel_in(self) -> Tensor:
        return _keys(self.context, self.key_a, torch.where(self.key_b == len(self.context), -1, self.key_b)).T

    @property
    def W_rel_out(self) -> Tensor:
        return self.gain * self.votes @ self.relation

    @property
    def W_in(self) -> Tensor:
        return (self.token[self.subject] + self.relation[self.relation_id]).T

    @property
    def W_out(self) -> Tensor:
        return self.logit_gain * self.output[self.answer]


def _pair_neurons(kb: KnowledgeBase, vocab: Vocabulary) -> tuple[Tensor, Tensor, Tensor]:
    """One neuron per distinct stored (s, a) pair; it votes for every relation giving s -> a."""
    facts = kb.triplets()
    pairs, inverse = torch.unique(facts[:, [0, 2]], dim=0, return_inverse=True)
    votes = torch.zeros(len(pairs), kb.n_relations).index_put_((inverse, facts[:, 1]), torch.tensor(1.0), accumulate=True)
    votes = votes / votes.sum(1, keepdim=True)  # an ambiguous pair splits its vote
    return vocab.subject_token(pairs[:, 0]), vocab.answer_token(pairs[:, 1]), votes


def _answer_neurons(kb: KnowledgeBase, vocab: Vocabulary) -> tuple[Tensor, Tensor, Tensor]:
    """One neuron per used answer; it votes for the relations that use it."""
    facts = kb.triplets()
    used = torch.unique(facts[:, 2])
    owners = torch.zeros(kb.n_answers, kb.n_relations)
    owners[facts[:, 2], facts[:, 1]] = 1.0
    votes = owners[used] / owners[used].sum(1, keepdim=True)
    return vocab.answer_token(used), torch.full_like(used, -1), votes


def pick_construction(kb: KnowledgeBase) -> str:
    """The construction ``memory="constructed"`` means for this knowledge base."""
    return "answer" if kb.answer_reveals_relation else "pair"
