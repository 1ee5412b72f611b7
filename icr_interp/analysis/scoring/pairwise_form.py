"""The pairwise template's closed form: the TV distance of a row to the nearest pairwise member, the member
itself, and the same distance under re-pairings (the null).

A row with subject masses ``p(s_i)`` and answer masses ``p(a_i)`` (pair mass ``M``) is at L1 distance
``(1 - M) + sum_i |p(s_i) - p(a_i)| + max(0, 1 - sum_i 2 max(p(s_i), p(a_i)))`` from the nearest member
``T(s_i) = T(a_i) = beta_i / 2`` of the pairwise family (derivation in docs/theory.md, "Template scoring";
:mod:`icr_interp.analysis.scoring.templates` uses it for every score).
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor

_CHUNK = 1 << 22  # elements per chunk of the re-paired score tensors (bounds memory, not a per-example loop)


def pairwise_tv(subject: Float[Tensor, "*lead pair"], answer: Float[Tensor, "*lead pair"]) -> Float[Tensor, "*lead"]:
    """TV distance from a row (given its pair masses; it sums to 1) to the nearest pairwise template."""
    pair_mass = (subject + answer).sum(-1)
    within = (subject - answer).abs().sum(-1)
    shortfall = (1 - 2 * torch.maximum(subject, answer).sum(-1)).clamp_min(0)
    return 0.5 * ((1 - pair_mass).clamp_min(0) + within + shortfall)


def fit_pairwise(subject: Float[Tensor, "*lead pair"],
                 answer: Float[Tensor, "*lead pair"]) -> Float[Tensor, "*lead pair"]:
    """Weights ``beta`` (on the simplex) of a nearest pairwise template.

    With ``t_i = beta_i / 2`` the cost of pair ``i`` is flat for ``t_i`` between
    its two masses, so if the larger masses sum to at least 1/2 every ``t_i``
    sits at the same fraction of its ``[min, max]`` interval; otherwise every
    pair is at its max and the rest is shared in proportion to it.
    """
    lo, hi = torch.minimum(subject, answer), torch.maximum(subject, answer)
    lo_sum, hi_sum = lo.sum(-1, keepdim=True), hi.sum(-1, keepdim=True)
    frac = ((0.5 - lo_sum) / (hi_sum - lo_sum).clamp_min(1e-12)).clamp(0, 1)
    inside = lo + frac * (hi - lo)
    share = torch.where(hi_sum > 0, hi / hi_sum.clamp_min(1e-12), torch.full_like(hi, 1 / hi.shape[-1]))
    above = hi + (0.5 - hi_sum).clamp_min(0) * share
    return 2 * torch.where(hi_sum >= 0.5, inside, above)


def pairing_scores(subject: Float[Tensor, "*lead pair"], answer: Float[Tensor, "*lead pair"],
                   perms: Int[Tensor, "perm pair"]) -> Float[Tensor, "*lead perm"]:
    """Pairwise score ``1 - TV`` of each row when pair ``i`` is ``(s_i, a_pi(i))``, for every ``pi`` in ``perms``.

    The same closed form (:func:`pairwise_tv`) on re-paired masses, so nothing
    but the pairing changes; chunked over permutations to bound memory.
    """
    perms = perms.to(answer.device)
    step = max(1, _CHUNK // max(1, answer.numel()))
    out = []
    for chunk in perms.split(step):
        paired = answer[..., chunk]  # [*lead perm pair]
        out.append(1 - pairwise_tv(subject[..., None, :].expand_as(paired), paired))
    return torch.cat(out, -1)
