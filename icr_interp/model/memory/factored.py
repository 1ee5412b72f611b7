"""The factored memory: a constructed memory computed from its table instead of dense weights.

Weights O(vocab * d_model + n_facts): every key is a sum of basis directions, so stage I and stage II are
gathers from ``x @ basis.T``. Same function and hook points as the dense memory (a test checks equality).
"""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from icr_interp.model.basis import ResidualBasis
from icr_interp.model.memory.base import MemoryModule, vote_scale
from icr_interp.model.memory.dense import _keys
from icr_interp.model.memory.registry import register
from icr_interp.model.memory.table import MemoryTable


class FactoredMemory(MemoryModule):
    """A constructed memory computed from its :class:`MemoryTable` instead of dense weights.

    Every key is a sum of basis directions, so ``x @ W_rel_in`` is a gather from
    ``x @ context.T`` and ``x @ W_in`` a gather from ``x @ token.T`` and
    ``x @ relation.T``; outputs scatter into answers before one small matmul.
    Same function and hook points as :class:`AssociativeMemory` (a test checks
    equality); the dense weights are available as properties for analyses.
    """

    def __init__(self, table: MemoryTable, basis: ResidualBasis, construction: str):
        super().__init__(construction)
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

    def recall(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
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


@register("factored")
def build_factored(table: MemoryTable, basis: ResidualBasis, construction: str) -> FactoredMemory:
    """A factored memory holding ``table``'s neurons written in ``basis``."""
    return FactoredMemory(table, basis, construction)
