"""Small statistics shared by the analyses: correlation and the standard error of a mean."""

import math

import torch
from jaxtyping import Float
from torch import Tensor


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two tensors' entries (NaNs dropped)."""
    x, y = x.flatten().double(), y.flatten().double()
    ok = ~(x.isnan() | y.isnan())
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def mean_and_se(values: Float[Tensor, " n"]) -> tuple[float, float]:
    """Mean of ``values`` and its standard error (sample std / sqrt(n); 0 for fewer than two values)."""
    values = values.detach().double().flatten()
    n = values.numel()
    if n == 0:
        return math.nan, math.nan
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else 0.0
    return float(values.mean()), se
