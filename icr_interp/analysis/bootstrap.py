"""Percentile bootstrap intervals of a mean over prompts (seeded; the analyses' 95% intervals).

Resample the prompts with replacement ``n_boot`` times, take the mean each time, and report the 2.5th and
97.5th percentiles.  Leading dimensions (layers, heads, windows) are resampled with the *same* prompt draws,
so intervals of different components are comparable.
"""

import torch
from jaxtyping import Float
from torch import Tensor

N_BOOT = 1000  # bootstrap resamples
LEVEL = 0.95  # two-sided coverage of the intervals


def bootstrap_mean_ci(values: Float[Tensor, "*lead n"], n_boot: int = N_BOOT, level: float = LEVEL,
                      seed: int = 0) -> tuple[Tensor, Tensor]:
    """Lower and upper percentile bounds ``[*lead]`` of the mean of ``values`` over its last axis."""
    values = values.detach().double()
    n = values.shape[-1]
    if n == 0:
        raise ValueError("bootstrap needs at least one value")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_boot, n), generator=gen).to(values.device)
    means = values[..., idx].mean(-1)  # [*lead boot]
    tail = (1 - level) / 2
    q = torch.tensor([tail, 1 - tail], dtype=means.dtype, device=means.device)
    lo, hi = torch.quantile(means, q, dim=-1)
    return lo.float(), hi.float()


def mean_ci(values: Float[Tensor, " n"], seed: int = 0) -> dict:
    """``{"mean", "lo", "hi"}`` of a 1-D sample (plain floats, for reports)."""
    lo, hi = bootstrap_mean_ci(values, seed=seed)
    return dict(mean=float(values.double().mean()), lo=float(lo), hi=float(hi))
