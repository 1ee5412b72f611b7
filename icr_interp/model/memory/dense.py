"""The dense memory: stage I and stage II as ordinary weight matrices (``W_rel_in``, ``W_in``, ...).

Weights O(n_facts * d_model): the reference implementation, and the one a pretrained memory is fitted in
(:mod:`icr_interp.model.memory.pretrained`). The same function as the factored and sparse memories (tests check).
"""

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from icr_interp.model.basis import ResidualBasis
from icr_interp.model.memory.base import MemoryModule, vote_scale
from icr_interp.model.memory.registry import register
from icr_interp.model.memory.table import MemoryTable


class AssociativeMemory(MemoryModule):
    """Two-stage associative memory (see module docstring)."""

    def __init__(self, d_model: int, n_rel_neurons: int, n_neurons: int, construction: str):
        super().__init__(construction)
        self.W_rel_in = nn.Parameter(torch.zeros(d_model, n_rel_neurons))
        self.b_rel_in = nn.Parameter(torch.zeros(n_rel_neurons))
        self.W_rel_out = nn.Parameter(torch.zeros(n_rel_neurons, d_model))
        self.W_in = nn.Parameter(torch.zeros(d_model, n_neurons))
        self.b_in = nn.Parameter(torch.zeros(n_neurons))
        self.W_out = nn.Parameter(torch.zeros(n_neurons, d_model))
        self.b_out = nn.Parameter(torch.zeros(d_model))
        # Vote normalisation (the mixed construction, see vote_scale); off for the other memories.
        self.normalise = False
        self.register_buffer("rel_votes", None, persistent=False)  # [n_rel_neurons relation] gain * votes, if normalising

    def recall(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
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


@register("dense")
def build_dense(table: MemoryTable, basis: ResidualBasis, construction: str) -> AssociativeMemory:
    """A dense memory holding ``table``'s neurons written in ``basis``."""
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
    return memory


def _keys(directions: Tensor, key_a: Tensor, key_b: Tensor) -> Tensor:
    """``directions[key_a] + directions[key_b]`` with ``key_b = -1`` read as nothing."""
    padded = torch.cat([directions, torch.zeros(1, directions.shape[1])])
    return padded[key_a] + padded[torch.where(key_b < 0, len(directions), key_b)]
