"""The fewest fine-tuning samples that reach a criterion: n* by a doubling grid refined by bisection.

A *chain* is one (knowledge base, start, parametrisation): one (N, seed,
attention).  Its runs differ only in the training-set size n (every run of a
chain has the same knowledge base, the same start and the same held-out
prompts, since they all derive from the run's seed).  For each criterion the
search

1. runs the largest training set, ``n_max`` (the *reference*), first: if it and
   the floor n = 1 both miss, the criterion is "not reached" and the search
   stops (two runs, not a walk over the whole grid);
2. otherwise walks the grid n = 1, 2, 4, ... until a run meets it;
3. bisects between the last miss ``lo`` and the first hit ``hi`` until
   ``hi - lo <= max(1, tolerance * hi)``;

and reports ``n* = hi``: the smallest size whose run meets the criterion, by the
one definition of n* (:func:`icr_interp.experiments.fits.smallest_hit`) that the
fixed grid uses too.  A chain whose first grid point already meets the
criterion has ``n* = 1``: the floor, which says the start plus one prompt
suffices -- it is reported as ``at_floor`` so that nobody reads it as a
resolved scaling point.  A miss observed above ``n*`` is reported as
``non_monotone`` (fine-tuning on few prompts is noisy).

Criteria (both computed on held-out prompts):

* ``accuracy``: accuracy >= ``target`` (the paper's);
* ``loss``: the run removed at least ``loss_fraction`` of the loss gap between
  the start and the reference run (``loss <= L_ref + (1 - loss_fraction)
  (L_start - L_ref)``): how many samples reach the large-sample loss.  A chain
  whose reference does not improve on its start (``L_ref >= L_start``) has no
  loss n*.

The search is a pure function of the runs so far (:func:`next_sizes`), so a
driver can run its requests as one batch per round (through the resumable
sweep, locally or on Ray) and call it again; :func:`search` is the in-process
driver for a measurement that is a plain function of the size.

**Capacity** (the largest size that still *passes*: how many facts a memory
stores at ``target`` recall) is the same search on the criterion ``fails``
(accuracy < target): its n* is the first failing size, and the capacity is the
bracket's ``lo``, the largest size seen to pass (:func:`capacity`).  A capacity
search sets ``reference_first=False`` (the largest size is the costliest run:
walk up from ``n_min`` by doubling instead) and ``n_min`` (where the doubling
starts).
"""

from dataclasses import asdict, dataclass

from icr_interp.experiments.fits import smallest_hit
from icr_interp.plumbing import check_int

CRITERIA = ("accuracy", "loss")  # the n* criteria (chain_summary); "fails" is the capacity criterion


@dataclass(frozen=True)
class SearchRule:
    """What counts as reaching the criterion, and how finely n* is resolved."""

    target: float = 0.95  # held-out accuracy target of the accuracy criterion
    loss_fraction: float = 0.9  # loss criterion: fraction of the start -> reference loss gap removed
    n_max: int = 1024  # the reference: the largest training set, run first; n* above it is "not reached"
    tolerance: float = 0.2  # bisection stops when hi - lo <= max(1, tolerance * hi)
    n_min: int = 1  # the grid's first point (doubling starts here)
    reference_first: bool = True  # run n_max first (n*: a cheap "not reached"); False: walk up from n_min

    def __post_init__(self) -> None:
        if not 0 < self.target <= 1:
            raise ValueError(f"target must lie in (0, 1], got {self.target}")
        if not 0 < self.loss_fraction <= 1:
            raise ValueError(f"loss_fraction must lie in (0, 1], got {self.loss_fraction}")
        check_int(self.n_max, "n_max", 1)
        if not 0 <= self.tolerance < 1:
            raise ValueError(f"tolerance must lie in [0, 1), got {self.tolerance}")
        check_int(self.n_min, "n_min", 1)
        if self.n_min > self.n_max:
            raise ValueError(f"n_min must be <= n_max, got n_min={self.n_min}, n_max={self.n_max}")

    @property
    def grid(self) -> list[int]:
        """The doubling grid n_min, 2 n_min, 4 n_min, ... below n_max, then n_max."""
        return sorted({self.n_min * 2**i for i in range(self.n_max.bit_length())
                       if self.n_min * 2**i < self.n_max} | {self.n_max})

    def to_dict(self) -> dict:
        return asdict(self)


def meets(criterion: str, run: dict, runs: dict[int, dict], rule: SearchRule) -> bool | None:
    """Whether ``run`` (a record with accuracy, loss, start_loss) meets ``criterion``; None: undecidable yet."""
    if criterion == "accuracy":
        return run["accuracy"] >= rule.target
    if criterion == "fails":
        return run["accuracy"] < rule.target
    if criterion != "loss":
        raise ValueError(f"criterion must be one of {(*CRITERIA, 'fails')}, got {criterion!r}")
    if rule.n_max not in runs:
        return None  # the reference loss is not known yet
    ref, start = runs[rule.n_max]["loss"], run["start_loss"]
    if not ref < start:
        return False  # nothing to reach: the reference does not improve on the start
    return run["loss"] <= ref + (1 - rule.loss_fraction) * (start - ref)


def n_star(runs: dict[int, dict], criterion: str, rule: SearchRule = SearchRule()) -> dict:
    """The search's state for one chain and criterion.

    Args:
        runs: training-set size -> that run's record (``accuracy``, ``loss``, ``start_loss``).
        criterion: ``"accuracy"`` or ``"loss"``.
        rule: the criterion's thresholds and the search's grid.

    Returns:
        ``n_star`` (None while unresolved or not reached), ``lo``/``hi`` (the bracket),
        ``resolved``, ``reached``, ``at_floor``, ``non_monotone`` and ``next`` (the size to run next, or None).
    """
    hits = {n: meets(criterion, r, runs, rule) for n, r in runs.items()}
    state = dict(criterion=criterion, n_star=None, lo=0, hi=None, resolved=False, reached=False,
                 at_floor=False, non_monotone=False, next=None)
    if not rule.reference_first:
        return _walk_up(hits, state, rule)
    if rule.n_max not in runs:
        return dict(state, next=rule.n_max)  # the reference first
    if criterion == "loss" and not runs[rule.n_max]["loss"] < runs[rule.n_max]["start_loss"]:
        return dict(state, resolved=True)  # the reference does not improve on the start: no loss n*
    hi, non_monotone = smallest_hit(hits)  # n* as the fixed grid of experiments.fits defines it
    if hi is None:  # the reference misses: check the floor, else "not reached" without walking the grid
        return dict(state, next=1) if 1 not in runs else dict(state, resolved=True)
    below = [g for g in rule.grid if g < hi and g not in runs]
    if below:  # walk the grid in order: a smaller grid point may still hit
        return dict(state, hi=hi, next=below[0])
    return _bisect(hits, hi, non_monotone, state, rule)


def _walk_up(hits: dict[int, bool | None], state: dict, rule: SearchRule) -> dict:
    """``reference_first=False``: the grid from ``n_min`` upward until a hit, then the same bisection."""
    hi, non_monotone = smallest_hit(hits)
    below = [g for g in rule.grid if (hi is None or g < hi) and g not in hits]
    if below:
        return dict(state, hi=hi, next=below[0])
    if hi is None:  # every grid point up to n_max ran and none hit: "not reached"
        return dict(state, lo=max(hits, default=0), resolved=True)
    return _bisect(hits, hi, non_monotone, state, rule)


def _bisect(hits: dict[int, bool | None], hi: int, non_monotone: bool, state: dict, rule: SearchRule) -> dict:
    """Bisect between the largest run below the first hit (``lo``) and the first hit (``hi``)."""
    lo = max((n for n in hits if n < hi), default=0)
    state.update(lo=lo, hi=hi, non_monotone=non_monotone)
    if hi - lo > max(1, int(rule.tolerance * hi)):
        return dict(state, next=(lo + hi) // 2)
    return dict(state, n_star=hi, resolved=True, reached=True, at_floor=hi == rule.grid[0])


def capacity(runs: dict[int, dict], rule: SearchRule) -> dict:
    """The largest size whose run reaches ``rule.target`` accuracy: the ``fails`` search's ``lo``.

    Returns the :func:`n_star` state of criterion ``"fails"`` plus ``capacity``: the largest size
    seen to pass below the first failure (None while unresolved; ``n_max`` when nothing failed, with
    ``reached`` False: the capacity is at least that; 0 when ``n_min`` already fails).
    """
    state = n_star(runs, "fails", rule)
    cap = None
    if state["resolved"]:
        cap = state["lo"] if state["reached"] else rule.n_max
    return dict(state, capacity=cap)


def search(measure, criterion: str, rule: SearchRule, log=None) -> dict[int, dict]:
    """Run the search in process: ``measure(n) -> record`` (``accuracy``, ...) for each size it asks for.

    Args:
        measure: the measurement at one size (e.g. train a memory storing ``n`` facts and score it).
        criterion: ``"accuracy"``, ``"loss"`` or ``"fails"`` (capacity).
        rule: target, grid and tolerance.
        log: called with ``(n, record)`` after each run.

    Returns:
        size -> record of every run the search made.
    """
    runs: dict[int, dict] = {}
    while (todo := next_sizes(runs, rule, (criterion,))):
        for n in todo:
            runs[n] = measure(n)
            if log is not None:
                log(n, runs[n])
    return runs


def next_sizes(runs: dict[int, dict], rule: SearchRule = SearchRule(),
               criteria: tuple[str, ...] = CRITERIA) -> list[int]:
    """The training-set sizes this chain needs next (empty: every criterion is resolved)."""
    return sorted({s["next"] for s in (n_star(runs, c, rule) for c in criteria) if s["next"] is not None})


def run_search(chains: dict[str, "RunConfig"], out_path, rule: SearchRule = SearchRule(),  # noqa: F821
               log=print, cached_only: bool = False, **sweep_options) -> dict[str, dict[int, dict]]:
    """Search n* for every chain, one batch of runs per round, through the resumable sweep.

    Args:
        chains: a name per chain -> its RunConfig (``train.n_samples`` is set per run).
        out_path: the sweep's JSONL results file (kill the search and call it again to resume:
            finished runs are read back, so the rounds replay instantly up to where it stopped).
        rule: criteria and grid.
        log: called with one line per round.
        cached_only: run nothing; replay each chain's rounds while every run they ask for is already in
            ``out_path`` (a partial search, to summarise a sweep that is still running or was stopped).
            A chain whose next round is missing stops there; the others go on.
        **sweep_options: passed to :func:`icr_interp.experiments.sweep.run_sweep` (executor, workers, ray_address...).

    Returns:
        chain name -> {training-set size -> that run's record}.
    """
    from pathlib import Path

    from icr_interp.experiments.sweep import load_results, run_sweep

    runs: dict[str, dict[int, dict]] = {name: {} for name in chains}
    cache = {r["key"]: r for r in load_results(out_path)} if cached_only and Path(out_path).exists() else {}
    stalled: set[str] = set()  # cached_only: chains whose next round is not in the cache
    for round_ in range(1, 10**4):
        todo = [(name, n) for name in chains if name not in stalled for n in next_sizes(runs[name], rule)]
        if not todo:
            if stalled:
                log(f"{len(stalled)} of {len(chains)} chains stopped at a round not done yet; "
                    "summarising the partial search")
            return runs
        configs = [chains[name].with_overrides(**{"train.n_samples": n}) for name, n in todo]
        if cached_only:
            missing = {name for (name, _), c in zip(todo, configs) if c.key not in cache}
            stalled |= missing
            for (name, n), c in zip(todo, configs):
                if name not in missing:  # a round is taken whole or not at all, as the search would run it
                    runs[name][n] = cache[c.key]
            continue
        log(f"round {round_}: {len(todo)} runs for {len({name for name, _ in todo})} unresolved chains")
        for (name, n), record in zip(todo, run_sweep(configs, out_path, **sweep_options)):
            runs[name][n] = record
    raise RuntimeError("the n* search did not terminate")  # unreachable: each round adds a run


def chain_summary(config: "RunConfig", runs: dict[int, dict], rule: SearchRule = SearchRule()) -> dict:  # noqa: F821
    """One line of ``summary.json``'s ``runs``: the chain's start, n* per criterion and cost."""
    acc, loss = (n_star(runs, c, rule) for c in CRITERIA)
    any_run = next(iter(runs.values()))
    k = config.knowledge
    return dict(n_triplets=k.n_subjects * k.n_relations, seed=config.seed, attention=config.model.attention,
                resolved=acc["resolved"], resolved_loss=loss["resolved"],
                n_subjects=k.n_subjects, n_relations=k.n_relations, d_model=any_run.get("d_model_used"),
                start_accuracy=any_run["start_accuracy"], start_loss=any_run["start_loss"],
                n_star=acc["n_star"], at_floor=acc["at_floor"], non_monotone=acc["non_monotone"],
                accuracy_at_n_star=runs[acc["n_star"]]["accuracy"] if acc["reached"] else None,
                n_star_loss=loss["n_star"], reference_loss=runs.get(rule.n_max, {}).get("loss"),
                reference_accuracy=runs.get(rule.n_max, {}).get("accuracy"),
                n_runs=len(runs), seconds=sum(r.get("seconds", 0.0) for r in runs.values()))


def summarize(lines: list[dict], n_boot: int = 2000) -> dict:
    """Per attention: n* per N (median, 90% interval over seeds) and both scaling fits with bootstrap intervals.

    Args:
        lines: :func:`chain_summary` lines.
        n_boot: bootstrap resamples of each fit.

    Returns:
        ``per_n`` and ``fits`` (accuracy criterion) and ``fits_loss`` (loss criterion), each keyed by attention.
    """
    import numpy as np

    from icr_interp.experiments.fits import bootstrap_fits

    per_n, fits, fits_loss = {}, {}, {}
    for attention in sorted({line["attention"] for line in lines}):
        mine = [line for line in lines if line["attention"] == attention]
        rows = []
        for size in sorted({line["n_triplets"] for line in mine}):
            group = [line for line in mine if line["n_triplets"] == size]
            stars = [line["n_star"] for line in group if line["n_star"] is not None]
            rows.append(dict(n_triplets=size, seeds=len(group), reached=len(stars),
                             resolved=sum(line["resolved"] for line in group),
                             non_monotone=sum(line["non_monotone"] for line in group),
                             at_floor=sum(line["at_floor"] for line in group),
                             n_star_median=float(np.median(stars)) if stars else None,
                             n_star_ci90=[float(v) for v in np.percentile(stars, [5, 95])] if stars else None,
                             start_accuracy_max=max(line["start_accuracy"] for line in group),
                             seconds=sum(line["seconds"] for line in group)))
        per_n[attention] = rows
        for key, out in (("n_star", fits), ("n_star_loss", fits_loss)):
            out[attention] = bootstrap_fits([(line["n_triplets"], line[key]) for line in mine
                                             if line[key] is not None], n_boot=n_boot)
    return dict(per_n=per_n, fits=fits, fits_loss=fits_loss)
