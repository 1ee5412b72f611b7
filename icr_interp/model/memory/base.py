"""What every associative memory shares: TransformerLens's MLP contract, five hook points, the direct path.

A memory is a two-stage MLP (:mod:`icr_interp.model.memory`) attached as ``blocks[-1].mlp``; its
``forward`` maps ``[batch pos d_model] -> [batch pos d_model]`` like TransformerLens's MLPs. Its own hook
points are declared here, once, so every implementation exposes the same names
(the ``memory`` sites of :data:`icr_interp.model.hooks.TABLE`):

* ``hook_rel_pre`` / ``hook_rel_post`` -- stage I's neurons (relation inference), ``[batch pos n_rel_neurons]``;
* ``hook_relation`` -- stage I's output, the inferred relation vector, ``[batch pos d_model]``;
* ``hook_pre`` / ``hook_post`` -- stage II's neurons (answer lookup), ``[batch pos n_neurons]``.

**The direct path.** On a random basis the mixed memory reads with crosstalk-free directions
(:mod:`icr_interp.model.memory.reads`) and must also remove the attention output's direct path to the logits
(its projection on the context span, ``x @ direct_path``). That subtraction is part of :meth:`forward`, so
``hook_mlp_out`` and a re-attached memory can never disagree with what the model computes.
"""

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


class MemoryModule(nn.Module):
    """Base of the memory implementations: subclasses define :meth:`recall` (stage I, then stage II)."""

    def __init__(self, construction: str):
        super().__init__()
        self.construction = construction
        self.hook_rel_pre = HookPoint()  # [batch, pos, n_rel_neurons]
        self.hook_rel_post = HookPoint()  # [batch, pos, n_rel_neurons]
        self.hook_relation = HookPoint()  # [batch, pos, d_model]: the inferred relation vector
        self.hook_pre = HookPoint()  # [batch, pos, n_neurons]
        self.hook_post = HookPoint()  # [batch, pos, n_neurons]
        self.register_buffer("direct_path", None, persistent=False)  # [d_model d_model] projector, or None

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        out = self.recall(x)
        return out if self.direct_path is None else out - x @ self.direct_path

    def recall(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        raise NotImplementedError

    def cancel_direct_path(self, projector: Float[Tensor, "d_model d_model"]) -> "MemoryModule":
        """Subtract ``x @ projector`` (the attention output's direct path) from every output."""
        self.direct_path = projector.clone()
        return self


def vote_scale(coef: Float[Tensor, "... relation"]) -> Float[Tensor, "... 1"]:
    """The mixed memory's normalisation: the factor that makes the strongest relation read
    ``min(1, total vote mass)`` and leaves the others in proportion to their votes.

    ``coef`` are the relation coefficients before normalisation (``gain * post @ votes``); their sum
    is the context's evidence (1 under uniform attention), their ratios say which relation it shows.
    A context with more evidence than that (many firing neurons) no longer overdrives stage II, and a
    fully attended but ambiguous one (votes split) still reaches it (docs/theory.md §2b).
    """
    return coef.sum(-1, keepdim=True).clamp_max(1.0) / coef.amax(-1, keepdim=True).clamp_min(1e-6)
