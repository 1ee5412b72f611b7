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


def construct_memory(construction: str, kb: KnowledgeBase, vocab: Vocabulary, basis: ResidualBasis,
                     n_pairs: int, scales: MemoryScales = MemoryScales()) -> AssociativeMemory:
    """Write a memory in closed form.

    Args:
        construction: ``"pair"`` or ``"answer"``.
        kb: the facts to store.
        vocab: token ids of the knowledge base.
        basis: residual-stream directions the weights are written in.
        n_pairs: context pairs per prompt (sets the stage-I gain).
        scales: thresholds and gains.
    """
    if construction not in CONSTRUCTIONS:
        raise ValueError(f"construction must be one of {CONSTRUCTIONS}, got {construction!r}")
    keys, rel_targets = (_pair_neurons if construction == "pair" else _answer_neurons)(kb, vocab, basis)
    memory = AssociativeMemory(basis.d_model, keys.shape[0], kb.n_triplets, construction)
    # Stage I fires by (weight of its tokens) - threshold; the answer neuron sees
    # one token, so its threshold is one token lower (docs/theory.md, section 2).
    threshold = scales.pair_threshold - (construction == "answer")
    # Gain: uniform attention over the context (weight 1 per token) gives a
    # relation vector of norm 1 (k pairs, each firing 2 - pair_threshold).
    gain = 1.0 / (n_pairs * (2.0 - scales.pair_threshold))
    facts = kb.triplets()  # [fact (s, r, a)]
    with torch.no_grad():
        memory.W_rel_in.copy_(keys.T)
        memory.b_rel_in.fill_(-threshold)
        memory.W_rel_out.copy_(gain * rel_targets)
        memory.W_in.copy_((basis.token[vocab.subject_token(facts[:, 0])] + basis.relation[facts[:, 1]]).T)
        memory.b_in.fill_(-scales.lookup_threshold)
        memory.W_out.copy_(scales.logit_gain * basis.output[vocab.answer_token(facts[:, 2])])
    memory.scales = asdict(scales)
    return memory


def _pair_neurons(kb: KnowledgeBase, vocab: Vocabulary, basis: ResidualBasis) -> tuple[Tensor, Tensor]:
    """One key per distinct stored (s, a) pair; it votes for every relation giving s -> a."""
    facts = kb.triplets()
    pairs, inverse = torch.unique(facts[:, [0, 2]], dim=0, return_inverse=True)
    keys = basis.context[vocab.subject_token(pairs[:, 0])] + basis.context[vocab.answer_token(pairs[:, 1])]
    votes = torch.zeros(len(pairs), kb.n_relations).index_put_((inverse, facts[:, 1]), torch.tensor(1.0), accumulate=True)
    votes = votes / votes.sum(1, keepdim=True)  # an ambiguous pair splits its vote
    return keys, votes @ basis.relation


def _answer_neurons(kb: KnowledgeBase, vocab: Vocabulary, basis: ResidualBasis) -> tuple[Tensor, Tensor]:
    """One key per used answer; it votes for the relations that use it."""
    facts = kb.triplets()
    used = torch.unique(facts[:, 2])
    owners = torch.zeros(kb.n_answers, kb.n_relations)
    owners[facts[:, 2], facts[:, 1]] = 1.0
    votes = owners[used] / owners[used].sum(1, keepdim=True)
    return basis.context[vocab.answer_token(used)], votes @ basis.relation


def pick_construction(kb: KnowledgeBase) -> str:
    """The construction ``memory="constructed"`` means for this knowledge base."""
    return "answer" if kb.answer_reveals_relation else "pair"
