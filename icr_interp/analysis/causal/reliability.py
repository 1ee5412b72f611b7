"""When a patching result can be trusted: one threshold, kept here, used by role patching and the circuit summary.

A normalised patching value divides by the clean - corrupted gap of the
metric.  Two things make that meaningless:

* **the gap is noise**: the per-example gaps ``d_i = m(clean_i) - m(corrupted_i)``
  average to less than :data:`Z` standard errors of their mean
  (``|mean d| <= Z * std(d) / sqrt(n)``) -- the corruption does not move the
  output reliably, and dividing by the gap turns noise into large shares;
* **the model is at chance**: its accuracy on the clean prompts is not
  :data:`Z` binomial standard errors above chance ``1 / n_answers``
  (``acc <= p + Z * sqrt(p (1 - p) / n)``) -- there is no behaviour to explain.

Either makes a result *unreliable*: its verdict says so instead of naming a
circuit.  Separately, a normalised value outside :data:`NORMALISED_RANGE`
(overshoot past the clean run, or beyond the corrupted one) is reported with
a warning: it is legal, but rarely what a share of an effect means.
"""

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.stats import mean_and_se

Z = 2.0  # the one reliability threshold, in standard errors (gap vs its spread; accuracy vs chance)
NORMALISED_RANGE = (-0.1, 1.1)  # normalised values outside this range carry a warning


@dataclass(frozen=True)
class Reliability:
    """Whether a clean-vs-corrupted comparison supports normalised shares, and why not."""

    reliable: bool  # both checks pass
    reason: str  # why not ("" when reliable)
    gap: float  # mean clean - corrupted metric (nan: unknown)
    gap_se: float  # its standard error over examples (nan: the metric has no per-example values)
    accuracy: float  # accuracy on the clean prompts (nan: not measured)
    chance: float  # chance accuracy 1 / n_answers (nan: unknown)
    n: int  # examples

    def to_dict(self) -> dict:
        return dict(reliable=self.reliable, reason=self.reason, gap=self.gap, gap_se=self.gap_se,
                    accuracy=self.accuracy, chance=self.chance, n=self.n, z=Z)


def gap_reason(gap: float, gap_se: float, clean: float, corrupted: float) -> str:
    """Why the gap cannot normalise (``""`` if it can): within ``Z`` standard errors of 0, or exactly 0."""
    if not math.isfinite(gap) or gap == 0.0:
        return f"clean ({clean:.4g}) and corrupted ({corrupted:.4g}) runs score almost the same (gap {gap:.3g})"
    if math.isfinite(gap_se) and abs(gap) <= Z * gap_se:
        return (f"clean ({clean:.4g}) and corrupted ({corrupted:.4g}) runs score almost the same: the gap "
                f"{gap:.3g} is within {Z:g} standard errors ({gap_se:.3g}) of zero over the examples")
    return ""


def chance_reason(accuracy: float, chance: float, n: int) -> str:
    """Why the model is at chance (``""`` if it is not, or if accuracy or chance is unknown)."""
    if not (math.isfinite(accuracy) and math.isfinite(chance)) or n < 1:
        return ""
    bound = chance + Z * math.sqrt(chance * (1.0 - chance) / n)
    if accuracy <= bound:
        return (f"the model is near chance (accuracy {accuracy:.3f} on {n} clean prompts, chance {chance:.3f}; "
                f"not {Z:g} standard errors above it)")
    return ""


def assess(clean_values: Float[Tensor, " n"] | None, corrupted_values: Float[Tensor, " n"] | None,
           clean: float, corrupted: float, accuracy: float = math.nan, chance: float = math.nan,
           n: int = 0) -> Reliability:
    """Both checks, from per-example metric values (None: only the means ``clean``/``corrupted`` are known)."""
    if clean_values is not None and corrupted_values is not None:
        gap, gap_se = mean_and_se(clean_values.flatten() - corrupted_values.flatten())
        n = n or clean_values.numel()
    else:
        gap, gap_se = clean - corrupted, math.nan
    reasons = [r for r in (chance_reason(accuracy, chance, n), gap_reason(gap, gap_se, clean, corrupted)) if r]
    return Reliability(not reasons, "; ".join(reasons), gap, gap_se, accuracy, chance, n)


def out_of_range(values: Float[Tensor, "..."], labels: list[str]) -> list[str]:
    """One warning line per normalised value outside :data:`NORMALISED_RANGE` (``labels`` name the entries)."""
    low, high = (float(torch.tensor(b, dtype=values.dtype)) for b in NORMALISED_RANGE)  # the bounds as stored
    flat = values.detach().flatten().tolist()
    return [f"{label} = {v:.3f} is outside [{NORMALISED_RANGE[0]:g}, {NORMALISED_RANGE[1]:g}]"
            for label, v in zip(labels, flat)
            if math.isfinite(v) and not low <= v <= high]
