"""Parametrisations of attention's query/key weights (``ModelConfig.attention``).

* ``"full"``: TransformerLens's own ``W_Q``, ``W_K`` of shape ``[head d_model
  d_head]`` -- ``d_model x d_head`` free numbers per head and matrix, a count
  that grows with the knowledge base (``d_model`` grows with the vocabulary).
  With few training prompts they can fit token-specific directions.
* ``"positional"``: query and key read only the *position* directions of the
  residual stream, and write only the first ``n_ctx`` head coordinates::

      W_Q[h] = d_head^(1/4) pos^T A_Q[h] F,   A_Q[h]: [n_ctx n_ctx] (trained),  F = I[:n_ctx]  (fixed)

  so an attention score depends on the two positions alone and is read in
  logits directly, ``score(i, j) = (A_Q A_K^T)[i, j]`` (the ``d_head^(1/4)``
  factors cancel TransformerLens's ``1/sqrt(d_head)``), and the number of
  trainable numbers (``2 * heads * n_ctx^2``) does not grow with the number of
  facts N.  Because the entries are in logit units, Adam's per-entry steps
  move logits at the same rate whatever ``d_model`` is.  A concentration argument over this fixed-size family is what
  gives polylogarithmic sample complexity (docs/theory.md).

The positional form is a ``torch.nn.utils.parametrize`` parametrisation, so
``attn.W_Q`` is still TransformerLens's ``[head d_model d_head]`` tensor (every
TransformerLens tool and every analysis reads it unchanged); the trained
tensor is ``attn.parametrizations.W_Q.original`` (``[head n_ctx n_ctx]``), which
checkpoints save and reload exactly.  ``right_inverse`` projects any full
``W_Q`` onto the family, which is how a model's start is written.
"""

import re

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from torch.nn.utils import parametrize

_PARAMETRISED = re.compile(r"parametrizations\.(\w+)\.original$")

# Fine-tuning's default recipe per parametrisation (``TrainConfig.lr`` / ``.schedule`` left at None).
# Adam moves every trained number by about ``lr`` per step.  Full W_Q/W_K numbers act through
# d_model-wide dot products, so a constant 0.003 already moves scores fast (larger steps overshoot).
# Positional entries are attention logits themselves: the answer-tilted start puts 4 logits on the
# answer slots (2 + 2 in the query and key factors), and training first reaches a plateau where the
# row is near-uniform over all 2k context tokens (accuracy ~1, loss ~0.8-1.0) before it suppresses a
# pair (loss ~0.05).  0.003 never leaves the start's answer-heavy row in 400 steps, 0.03 stops on the
# plateau on half the shapes measured, 0.1 leaves it on all of them; a cosine decay to 0 then lets the
# row settle instead of jittering around the pattern (docs/results.md, "Positional attention").
DEFAULT_LR = {"full": 0.003, "positional": 0.1}
DEFAULT_SCHEDULE = {"full": "constant", "positional": "cosine"}


class PositionalQK(nn.Module):
    """``A [head n_ctx n_ctx] -> W [head d_model d_head]``: reads positions, writes the first n_ctx head dims."""

    def __init__(self, pos: Float[Tensor, "n_ctx d_model"], d_head: int):
        super().__init__()
        if d_head < pos.shape[0]:
            raise ValueError(f"positional attention needs d_head >= n_ctx = {pos.shape[0]}, got {d_head}")
        self.register_buffer("pos", pos.clone())
        self.d_head = d_head

    def forward(self, A: Float[Tensor, "head n_ctx r"]) -> Float[Tensor, "head d_model d_head"]:
        W = self.d_head**0.25 * einops.einsum(self.pos, A, "p d, h p r -> h d r")
        return F.pad(W, (0, self.d_head - A.shape[-1]))

    def right_inverse(self, W: Float[Tensor, "head d_model d_head"]) -> Float[Tensor, "head n_ctx r"]:
        return einops.einsum(self.pos, W[..., : self.pos.shape[0]], "p d, h d r -> h p r") / self.d_head**0.25


def positional_qk(attn: nn.Module, pos: Float[Tensor, "n_ctx d_model"], A_Q: Float[Tensor, "head n_ctx r"],
                  A_K: Float[Tensor, "head n_ctx r"]) -> None:
    """Restrict ``attn.W_Q`` and ``attn.W_K`` to the positional family, starting at ``A_Q``, ``A_K`` (logit units)."""
    for name, A in (("W_Q", A_Q), ("W_K", A_K)):
        parametrize.register_parametrization(attn, name, PositionalQK(pos, attn.W_Q.shape[-1]))
        with torch.no_grad():
            getattr(attn.parametrizations, name).original.copy_(A)


def logical_name(parameter_name: str) -> str:
    """The TransformerLens name of a parameter: ``attn.parametrizations.W_Q.original`` -> ``attn.W_Q``."""
    return _PARAMETRISED.sub(r"\1", parameter_name)
