"""Sample complexity: the fewest fine-tuning samples that reach a target, and scaling fits.

For each knowledge-base size N (stored triplets) and seed, a grid of training
set sizes n is fine-tuned; ``n*`` is the smallest n on the grid whose held-out
result meets the target, and a run that misses above it is reported in
``non_monotone`` (:func:`smallest_hit`, the one definition of n*, which the
resolved search of :mod:`icr_interp.experiments.n_star` uses too).  Two targets:

* ``accuracy``: held-out accuracy >= ``target`` (the paper's criterion);
* ``pattern``: held-out accuracy >= ``target`` x the best accuracy any n reached
  at that N *and* mean-row pairwise score >= ``pattern_target`` -- the pairwise
  pattern has emerged and accuracy is at its plateau (meaningful when the
  plateau is below ``target`` or the start is already accurate).

Fits, by least squares in log space over the (N, n*) points:

* power law ``n* = a N^gamma``:        log n* = log a + gamma log N;
* polylog   ``n* = a (log N)^c``:      log n* = log a + c log log N.

The better fit has the smaller residual; ``gamma`` near 0 means no detectable
polynomial growth over the range.  :func:`bootstrap_fits` adds 90% intervals on
both exponents.  The resolved n* search (doubling grid + bisection, instead of a
fixed grid) is :mod:`icr_interp.experiments.n_star`.
"""

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np


@dataclass
class Fit:
    """A scaling law fitted in log space."""

    kind: str  # "power" or "polylog"
    a: float  # prefactor
    exponent: float  # gamma (power) or c (polylog)
    rmse: float  # residual RMS of log n*

    def predict(self, n_triplets: np.ndarray) -> np.ndarray:
        x = np.asarray(n_triplets, dtype=float)
        return self.a * (x**self.exponent if self.kind == "power" else np.log(x) ** self.exponent)

    def to_dict(self) -> dict:
        return dict(kind=self.kind, a=self.a, exponent=self.exponent, rmse=self.rmse)


def fit(n_triplets, n_star, kind: str) -> Fit:
    """Least-squares fit of ``kind`` ("power" or "polylog") to points (N, n*)."""
    x = np.log(np.asarray(n_triplets, dtype=float))
    if kind == "polylog":
        x = np.log(x)
    elif kind != "power":
        raise ValueError(f"kind must be 'power' or 'polylog', got {kind!r}")
    y = np.log(np.asarray(n_star, dtype=float))
    if len(set(x.tolist())) < 2:
        raise ValueError("a fit needs points at two or more sizes")
    slope, intercept = np.polyfit(x, y, 1)
    rmse = float(np.sqrt(np.mean((intercept + slope * x - y) ** 2)))
    return Fit(kind, float(math.exp(intercept)), float(slope), rmse)


def smallest_hit(hits: dict[int, bool | None]) -> tuple[int | None, bool]:
    """The one definition of n*, used by the fixed grid here and by the search of :mod:`~icr_interp.experiments.n_star`.

    Args:
        hits: training-set size -> whether its run met the criterion (None: not decidable yet).

    Returns:
        ``(n_star, non_monotone)``: the smallest size whose run met the criterion (None if none did), and
        whether a run *above* it missed (fine-tuning on few prompts is noisy).
    """
    sizes = sorted(n for n, hit in hits.items() if hit)
    if not sizes:
        return None, False
    return sizes[0], any(hit is False for n, hit in hits.items() if n > sizes[0])


def _meets(run: dict, target: float, criterion: str, plateau: float, pattern_target: float) -> bool:
    if criterion == "accuracy":
        return run["accuracy"] >= target
    return run["accuracy"] >= target * plateau and run.get("mean_row_pairwise", 0.0) >= pattern_target


def sample_complexity(results: list[dict], target: float = 0.95, criterion: str = "accuracy",
                      pattern_target: float = 0.9) -> list[dict]:
    """n* per (N, seed) from sweep records (n_triplets, accuracy, ...; seed and n_samples from their config).

    Returns one dict per (N, seed): ``n_triplets``, ``seed``, ``n_star`` (None
    if no n on the grid met the target), ``plateau`` (best accuracy at that N
    and seed), ``non_monotone``.
    """
    if criterion not in ("accuracy", "pattern"):
        raise ValueError(f"criterion must be 'accuracy' or 'pattern', got {criterion!r}")
    from icr_interp.experiments.sweep.store import flat  # the axes (seed, n_samples) live in a record's config

    groups = defaultdict(list)
    for run in map(flat, results):
        groups[(run["n_triplets"], run["seed"])].append(run)
    rows = []
    for (n_triplets, seed), runs in sorted(groups.items()):
        plateau = max(r["accuracy"] for r in runs)
        star, non_monotone = smallest_hit({r["n_samples"]: _meets(r, target, criterion, plateau, pattern_target)
                                           for r in runs})
        rows.append(dict(n_triplets=n_triplets, seed=seed, criterion=criterion, plateau=plateau, n_star=star,
                         non_monotone=non_monotone))
    return rows


def bootstrap_fits(points: list[tuple[int, float]], n_boot: int = 2000, seed: int = 0) -> dict:
    """Power-law and polylog fits to (N, n*) points, with bootstrap 90% intervals on gamma and c.

    The bootstrap resamples the points *within each N* (the seeds of a size are
    exchangeable; the sizes are the design), refits both laws, and takes the
    5th and 95th percentiles of the exponents.  ``better`` is the law with the
    smaller residual on the data (``"tie"`` when they are equal, e.g. when every
    n* is the same), and ``polylog_better_fraction`` how often polylog wins
    over the resamples.

    Returns:
        ``power`` (``gamma``, ``gamma_ci90``, ``a``, ``rmse``), ``polylog`` (``c``,
        ``c_ci90``, ``a``, ``rmse``), ``better``, ``polylog_better_fraction``,
        ``n_points``; power and polylog are None with fewer than two sizes.
    """
    groups = defaultdict(list)
    for n, s in points:
        groups[n].append(s)
    out = dict(power=None, polylog=None, better=None, polylog_better_fraction=None, n_points=len(points))
    if len(groups) < 2:
        return out
    n, s = zip(*points)
    power, polylog = fit(n, s, "power"), fit(n, s, "polylog")
    rng = np.random.default_rng(seed)
    exps, wins = {"power": [], "polylog": []}, 0
    for _ in range(n_boot):
        xs, ys = [], []
        for size, stars in groups.items():
            xs += [size] * len(stars)
            ys += list(rng.choice(stars, size=len(stars), replace=True))
        fits = {kind: fit(xs, ys, kind) for kind in exps}
        for kind, f in fits.items():
            exps[kind].append(f.exponent)
        wins += fits["polylog"].rmse < fits["power"].rmse
    ci = {kind: [float(v) for v in np.percentile(values, [5, 95])] for kind, values in exps.items()}
    gap = power.rmse - polylog.rmse
    out.update(power=dict(gamma=power.exponent, gamma_ci90=ci["power"], a=power.a, rmse=power.rmse),
               polylog=dict(c=polylog.exponent, c_ci90=ci["polylog"], a=polylog.a, rmse=polylog.rmse),
               better="tie" if abs(gap) < 1e-9 else ("polylog" if gap > 0 else "power"),
               polylog_better_fraction=wins / n_boot)
    return out


def constant_fit(params, n_facts, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """The constant ``c`` of ``params = c N log N`` (natural log) over (params, N) points, with a bootstrap interval.

    The associative-memory laws (Nichani, Lee and Bietti 2024) have this form with a slope of one, so
    only the constant is fitted: by least squares in log space, ``log c = mean(log params - log(N log N))``
    (the geometric mean of the per-point constants).  The bootstrap resamples the points with
    replacement and takes the central ``level`` interval of the refitted constants.

    Returns:
        ``constant``, ``ci_low``, ``ci_high``, ``level``, ``per_point`` (each point's own constant),
        ``rmse`` (residual RMS of log c) and ``n_points``; the constant is None without a point with N >= 2.
    """
    p, n = np.asarray(params, dtype=float), np.asarray(n_facts, dtype=float)
    keep = n >= 2  # N log N vanishes at N = 1: no constant there
    out = dict(constant=None, ci_low=None, ci_high=None, level=level, per_point=[], rmse=None,
               n_points=int(keep.sum()))
    if not keep.any():
        return out
    logc = np.log(p[keep]) - np.log(n[keep] * np.log(n[keep]))
    rng = np.random.default_rng(seed)
    boot = np.exp(rng.choice(logc, size=(n_boot, len(logc)), replace=True).mean(1))
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    out.update(constant=float(np.exp(logc.mean())), ci_low=float(lo), ci_high=float(hi),
               per_point=[float(v) for v in np.exp(logc)], rmse=float(np.sqrt(np.mean((logc - logc.mean()) ** 2))))
    return out
