"""A layer's combined query row: its heads' rows weighted by how much each head writes.

With several heads, what a later component reads at the query is not one head's
row but the sum of the heads' outputs, ``sum_h alpha_h V_h W_O[h]``.  When
every head copies tokens with the same map up to a scale (our construction:
each head writes ``1 / n_heads`` of the copy, see :mod:`icr_interp.model.builder`), that
sum is the copy of one *combined* row ``sum_h share_h alpha_h`` with

    share_h = ||W_V[h] W_O[h]||_F / sum_h' ||W_V[h'] W_O[h']||_F,

the head's share of the layer's OV gain.  The combined row is a convex
combination of distributions, so it is a distribution and the template scores
apply to it unchanged.  It answers whether a *layer* is pairwise when no single
head is: one head on subjects and one on answers, each "not pairwise" alone,
combine into an equal split.  For a one-head layer it is that head's row.

For a foreign model whose heads copy with different maps the combined row is
still the OV-weighted mean, but it no longer is exactly what the next component
reads; the shares say how far each head is counted.
"""

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.tl.compat import TLModel, per_head


def ov_norms(model: TLModel) -> Float[Tensor, "layer head"]:
    """Frobenius norm of every head's OV map ``W_V[h] W_O[h]`` (``d_model x d_model``, never formed).

    ``||W_V W_O||_F^2 = tr(W_V^T W_V W_O W_O^T)``: two ``d_head x d_head`` Gram matrices.
    """
    # per query head on both TransformerLens lines (a TransformerBridge gives W_V per key/value head)
    W_V, W_O = per_head(model, "W_V").detach(), per_head(model, "W_O").detach()  # [layer head d_model d_head], [.. d_model]
    gram_v = einops.einsum(W_V, W_V, "l h d e, l h d f -> l h e f")
    gram_o = einops.einsum(W_O, W_O, "l h e d, l h f d -> l h e f")
    return (gram_v * gram_o).sum((-1, -2)).clamp_min(0).sqrt()


def ov_shares(model: TLModel) -> Float[Tensor, "layer head"]:
    """Each head's share of its layer's OV gain (rows sum to 1; equal shares where a layer writes nothing)."""
    return normalise_shares(ov_norms(model))


def normalise_shares(weights: Float[Tensor, "layer head"]) -> Float[Tensor, "layer head"]:
    """Weights scaled to sum to 1 per layer; a layer of zero weights gets equal shares."""
    weights = weights.float()
    if (weights < 0).any() or not torch.isfinite(weights).all():
        raise ValueError("head weights must be finite and >= 0")
    total = weights.sum(-1, keepdim=True)
    equal = torch.full_like(weights, 1 / weights.shape[-1])
    return torch.where(total > 0, weights / total.clamp_min(1e-30), equal)


def combine_rows(rows: Float[Tensor, "layer head batch pos"],
                 shares: Float[Tensor, "layer head"]) -> Float[Tensor, "layer batch pos"]:
    """The combined row of every layer: ``sum_h shares[l, h] * rows[l, h]``."""
    return einops.einsum(rows, shares.to(rows), "l h b p, l h -> l b p")
