"""Capacity: how many facts a memory of a given size stores, against the associative-memory laws.

For each memory the toolkit trains and each size (``d_model`` x neurons) the sweep finds the largest
number of stored facts N at which recall is still >= ``target`` (0.99), by the one n* search
(:mod:`icr_interp.experiments.n_star`: doubling from a floor, then bisection, on the ``fails``
criterion; :func:`~icr_interp.experiments.n_star.capacity`).  The search variable is the number of
subjects S of a random knowledge base with ``n_relations`` bijective relations over S shared answers, so
N = S R.  Memories:

* ``pretrained`` -- the pretrained memory (:mod:`icr_interp.model.memory.pretrained`), ``neurons`` per
  stage, on random unit embeddings (the residual basis turns random below the exact width, as in
  Nichani, Lee and Bietti 2024).  Recall: the weight-only memory probe
  (:func:`icr_interp.analysis.weights.weight_probes.memory_probe`), every stored (s, r) from clean embeddings.
  Only stage II (the lookup) is fitted: stage I's loss reads disjoint parameters, so under Adam
  stage II's training is the toolkit's pretraining in law, without the cost of sampling prompts.
  Parameters: ``m d`` (the anchor's count: m . d ~ 0.35 N log N for an MLP memory).
* ``ic_model`` -- the full IC-recall model: that memory pretrained on both exercises
  (:func:`icr_interp.pretrain_memory`), then attention fine-tuned (:func:`icr_interp.finetune`).
  Recall: held-out IC-recall accuracy (:func:`icr_interp.evaluate`) over its Bayes ceiling (a context that
  two relations explain equally cannot be answered; the raw accuracy is kept as ``raw_accuracy``).  Parameters: ``4 H d_head d +
  2 m d`` per stage (the anchor's one-layer transformer count; facts ~ 0.15 x parameters).
* ``constructed`` -- the closed-form memory (:mod:`icr_interp.model.memory.table`), no search: one
  stage-II neuron per fact, so it stores exactly ``N = m`` facts (``m`` rounded down to whole subjects)
  whenever its keys separate, and the weight-only probe checks that recall is exactly 1 at that N
  (derivation: docs/theory.md, "Capacity of the constructed memory").

The fit is ``params = c N log N`` with a bootstrap 95% interval on ``c``
(:func:`icr_interp.experiments.fits.constant_fit`), beside the anchors.
"""

import math
import time
from dataclasses import asdict, dataclass, field

import torch

from icr_interp.analysis.weights.weight_probes import memory_probe
from icr_interp.experiments.fits import constant_fit
from icr_interp.experiments.n_star import SearchRule, capacity, search
from icr_interp.model.builder import build_model
from icr_interp.model.basis import n_directions_needed
from icr_interp.model.memory import pretrained as pretraining
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask
from icr_interp.training.trainer import evaluate, finetune

MEMORIES = ("pretrained", "ic_model")  # the trained memories the sweep searches
ANCHORS = dict(  # Nichani, Lee and Bietti 2024 (random embeddings, 99% accuracy)
    mlp=0.35,  # MLP memory: m d ~ 0.35 N log N
    linear=1.3,  # linear associative memory: d^2 ~ 1.3 N log N
    transformer_facts_per_param=0.15,  # one-layer transformer: facts ~ 0.15 x (4 H d_h d + 2 m d)
)
SIZES = ((24, 48), (32, 64), (48, 96), (64, 128), (96, 192))  # (d_model, neurons): the full sweep's grid
QUICK_SIZES = SIZES[:3]  # the pinned quick run (case_studies/capacity.py --quick)


@dataclass(frozen=True)
class CapacityConfig:
    """One capacity sweep (every field saved with the results)."""

    sizes: tuple = SIZES  # (d_model, neurons) pairs
    memories: tuple = MEMORIES  # which trained memories to search ("pretrained", "ic_model")
    n_relations: int = 4  # relations R of the knowledge base (N = S R)
    n_pairs: int = 2  # context pairs k of the IC-recall prompts
    target: float = 0.99  # recall / accuracy a size must reach
    tolerance: float = 0.1  # the search stops when hi - lo <= max(1, tolerance hi) subjects
    max_subjects: int = 4096  # the search's n_max (subjects)
    pretrain_steps: int = 1500  # memory pretraining steps (the toolkit's default)
    finetune_steps: int = 300  # ic_model: attention fine-tuning steps
    n_samples: int = 2048  # ic_model: fine-tuning prompts
    eval_prompts: int = 1024  # ic_model: held-out prompts
    seed: int = 0  # knowledge base, basis, initialisation
    n_boot: int = 2000  # bootstrap resamples of the fit

    def __post_init__(self) -> None:
        unknown = sorted(set(self.memories) - set(MEMORIES))
        if unknown:
            raise ValueError(f"memories must be among {MEMORIES}, got {unknown[0]!r}")
        for d, m in self.sizes:
            if not (isinstance(d, int) and isinstance(m, int) and d >= 8 and m >= 1):
                raise ValueError(f"each size is (d_model >= 8, neurons >= 1), got {(d, m)!r}")
        if not 0 < self.target <= 1:
            raise ValueError(f"target must lie in (0, 1], got {self.target}")

    def to_dict(self) -> dict:
        return asdict(self)


def memory_params(kind: str, d_model: int, neurons: int) -> int:
    """The parameter count each anchor uses: ``m d`` (MLP memory) or ``4 d^2 + 2 (2 m d)`` (one-layer model,
    one head with d_head = d_model, and two memory stages of ``m`` neurons)."""
    return d_model * neurons if kind == "pretrained" else 4 * d_model * d_model + 2 * 2 * neurons * d_model


def start_subjects(config: CapacityConfig, kind: str, d_model: int, neurons: int) -> int:
    """Where the doubling starts: an eighth of the MLP anchor's N at this size (in subjects), at least k + 1.

    Every run costs the same pretraining, so starting near the answer saves the cheap-looking small runs; a
    floor that already fails is bisected down from (the search handles it)."""
    anchor = _solve_nlogn(memory_params("pretrained", d_model, neurons) / ANCHORS["mlp"])
    floor = int(anchor / (8 * config.n_relations)) if kind == "pretrained" else 0
    return min(config.max_subjects, max(config.n_pairs + 1, floor))


def _task(config: CapacityConfig, n_subjects: int) -> ICRecallTask:
    kb = KnowledgeBase.random(n_subjects, config.n_relations, n_subjects, answer_overlap=1.0, seed=config.seed)
    return ICRecallTask(kb, n_pairs=config.n_pairs)


def fit_lookup(model, task: ICRecallTask, steps: int) -> list[float]:
    """Fit a pretrained memory's stage II (the lookup exercise of :func:`icr_interp.pretrain_memory`) only."""
    cfg = model.icr_config
    opts = dict(cfg.pretrain, steps=steps)
    memory = model.blocks[-1].mlp
    start, gen = pretraining._initialised(task, cfg.d_model, opts)
    stage2 = [memory.W_in, memory.b_in, memory.W_out, memory.b_out]
    with torch.no_grad():
        for p, p0 in zip(memory.parameters(), start.parameters()):
            p.copy_(p0)
    opt = torch.optim.Adam(stage2, lr=opts["lr"])
    basis, W_U, losses = model.basis, model.unembed.W_U.detach(), []
    with torch.enable_grad():
        for p in stage2:
            p.requires_grad_(True)
        for _ in range(steps):
            loss = pretraining._lookup_loss(memory, task, basis, W_U, opts, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    model.memory_fitted = True
    return losses


def measure(kind: str, config: CapacityConfig, d_model: int, neurons: int, n_subjects: int) -> dict:
    """One run of the search: train ``kind`` at this size storing ``n_subjects x n_relations`` facts, score it."""
    t0 = time.perf_counter()
    if n_subjects < config.n_pairs + 1:  # no prompt can be formed: counts as a failure
        return dict(accuracy=0.0, n_facts=n_subjects * config.n_relations, seconds=0.0, skipped=True)
    task = _task(config, n_subjects)
    model = build_model(task, memory="pretrained", d_model=d_model, seed=config.seed,
                        pretrain=dict(width=neurons, steps=config.pretrain_steps))
    if kind == "pretrained":
        loss = fit_lookup(model, task, config.pretrain_steps)[-1]
        record = dict(accuracy=memory_probe(model, task)["accuracy"], loss=loss)
    else:
        pretraining.pretrain_memory(model, task, progress=False)
        finetune(model, task, n_samples=config.n_samples, steps=config.finetune_steps, seed=config.seed,
                 progress=False)
        held_out = evaluate(model, task, n_prompts=config.eval_prompts, seed=config.seed)
        # relative to the Bayes ceiling: with few subjects two relations can explain a context equally
        record = dict(accuracy=held_out["accuracy"] / max(held_out["ceiling"], 1e-9), raw_accuracy=held_out["accuracy"],
                      ceiling=held_out["ceiling"], loss=held_out["loss"], memory_recall=memory_probe(model, task)["accuracy"])
    return dict(record, n_facts=task.kb.n_triplets, seconds=time.perf_counter() - t0)


def constructed_row(config: CapacityConfig, d_model: int, neurons: int) -> dict:
    """The closed-form memory at this size: N = m facts (whole subjects), its weight-probe recall, exactness."""
    n_subjects = max(config.n_pairs + 1, neurons // config.n_relations)
    task = _task(config, n_subjects)
    model = build_model(task, memory="pair", d_model=d_model, seed=config.seed)
    n = task.kb.n_triplets
    exact = n_directions_needed(task.vocab.size, task.n_ctx, task.vocab.n_relations) <= d_model
    return dict(memory="constructed", d_model=d_model, neurons=n, params=memory_params("pretrained", d_model, n),
                n_star=n, recall_at_n_star=memory_probe(model, task)["accuracy"], exact_basis=exact,
                exact_capacity=exact_capacity(d_model, config.n_relations, task.n_ctx))


def exact_capacity(d_model: int, n_relations: int, n_ctx: int) -> int:
    """Facts the constructed memory stores in an *exactly orthonormal* basis of width ``d_model``.

    The exact basis needs ``3 V + n_ctx + R`` directions (token, context and output copies of the
    vocabulary, positions, relations) with ``V = 2 S + R + 1`` (S subjects, S answers, R relation tokens,
    BOS), so ``S <= (d - n_ctx - 4 R - 3) / 6`` and ``N = S R``; with one neuron per fact the recall
    there is exactly 1 (docs/theory.md).
    """
    return max(0, (d_model - n_ctx - 4 * n_relations - 3) // 6) * n_relations


@dataclass
class CapacityResult:
    """Rows (one per memory and size) and the fit per memory."""

    config: dict
    rows: list = field(default_factory=list)  # memory, d_model, neurons, params, n_star (facts), runs, ...
    fits: dict = field(default_factory=dict)  # memory -> constant_fit(...)
    seconds: float = 0.0

    @property
    def fit(self) -> dict:
        """The pretrained memory's fit (the anchor 0.35's), else the first memory's."""
        return self.fits.get("pretrained") or next(iter(self.fits.values()), constant_fit([], []))

    def to_dict(self) -> dict:
        return dict(config=self.config, rows=self.rows, fits=self.fits, fit=self.fit, anchors=ANCHORS,
                    seconds=self.seconds)


def capacity_sweep(config: CapacityConfig | None = None, log=print, **overrides) -> CapacityResult:
    """Find the capacity of every memory at every size, fit ``params = c N log N`` and add the constructed rows.

    Args:
        config: the sweep (default :class:`CapacityConfig`); ``**overrides`` replace its fields.
        log: called with one line per run.

    Returns:
        A :class:`CapacityResult`; ``to_dict()`` has ``rows`` (each with ``params`` and ``n_star``, the
        largest N that reached the target) and ``fit`` (``constant``, ``ci_low``, ``ci_high``).
    """
    config = CapacityConfig(**{**(config or CapacityConfig()).to_dict(), **overrides})
    t0, result = time.perf_counter(), CapacityResult(config=config.to_dict())
    R = config.n_relations
    for kind in config.memories:
        for d, m in config.sizes:
            rule = SearchRule(target=config.target, n_max=config.max_subjects, tolerance=config.tolerance,
                              n_min=start_subjects(config, kind, d, m), reference_first=False)
            runs = search(lambda s: measure(kind, config, d, m, s), "fails", rule,
                          log=lambda s, r: log(f"{kind} d={d} m={m}: N={s * R} accuracy {r['accuracy']:.3f} "
                                               f"({r['seconds']:.1f} s)"))
            state = capacity(runs, rule)
            cap = state["capacity"] or 0
            result.rows.append(dict(memory=kind, d_model=d, neurons=m, params=memory_params(kind, d, m),
                                    n_star=cap * R, n_subjects=cap, reached=state["reached"],
                                    non_monotone=state["non_monotone"], n_runs=len(runs),
                                    runs={str(s * R): r for s, r in sorted(runs.items())},
                                    seconds=sum(r["seconds"] for r in runs.values())))
        mine = [r for r in result.rows if r["memory"] == kind and r["reached"] and r["n_star"] >= 2]
        result.fits[kind] = constant_fit([r["params"] for r in mine], [r["n_star"] for r in mine],
                                         n_boot=config.n_boot, seed=config.seed)
        if kind == "ic_model":
            per = [r["n_star"] / r["params"] for r in mine]
            result.fits[kind]["facts_per_param"] = sum(per) / len(per) if per else None
    result.rows += [constructed_row(config, d, m) for d, m in config.sizes]
    result.seconds = time.perf_counter() - t0
    return result


def plot_capacity(result: dict):
    """Capacity against parameters, with the fitted laws and the anchors (returns a matplotlib Figure)."""
    import numpy as np

    from icr_interp.viz.figures import new_figure

    fig, axes = new_figure(6.4, 4.4)
    ax = axes[0, 0]
    colours = dict(pretrained="C0", ic_model="C1", constructed="C2")
    params = [r["params"] for r in result["rows"]] or [1]
    grid = np.geomspace(max(1, min(params)) / 2, max(params) * 2, 100)
    n_of = lambda p, c: np.array([_solve_nlogn(x / c) for x in p])  # noqa: E731
    for memory in colours:
        rows = [r for r in result["rows"] if r["memory"] == memory and r["n_star"]]
        if rows:
            ax.scatter([r["params"] for r in rows], [r["n_star"] for r in rows], color=colours[memory], label=memory)
        c = result["fits"].get(memory, {}).get("constant")
        if c:
            ax.plot(grid, n_of(grid, c), color=colours[memory], lw=1,
                    label=f"fit {memory}: params = {c:.2f} N ln N")
    ax.plot(grid, n_of(grid, ANCHORS["mlp"]), "k--", lw=1, label="anchor: m d = 0.35 N ln N")
    ax.plot(grid, ANCHORS["transformer_facts_per_param"] * grid, "k:", lw=1, label="anchor: N = 0.15 params")
    ax.set(xscale="log", yscale="log", xlabel="parameters", ylabel="capacity N (facts at >= 99% recall)")
    ax.legend(fontsize=7)
    return fig


def _solve_nlogn(y: float) -> float:
    """The N with N ln N = y (Newton's method; N >= 2)."""
    n = max(2.0, y / max(1.0, math.log(max(y, 2.0))))
    for _ in range(50):
        n = max(2.0, n - (n * math.log(n) - y) / (math.log(n) + 1))
    return n


def plot_probe_series(series: list[dict]):
    """The weight-only probes beside behaviour over fine-tuning (rows of
    :func:`icr_interp.analysis.weights.weight_probes.probe_series`); returns a matplotlib Figure."""
    from icr_interp.viz.figures import new_figure

    fig, axes = new_figure(10, 3.2, ncols=3)
    steps = [row["step"] for row in series]
    panels = (("memory recall", [r["memory"]["accuracy"] for r in series], [r["behaviour_recall"] for r in series]),
              ("QK within-pair effect", [r["qk"]["pairwise_effect"] for r in series],
               [r["measured_pairwise_effect"] for r in series]),
              ("OV context copy (answer slot)", [r["ov"]["answer"]["context_copy"][0] for r in series],
               [r["accuracy"] for r in series]))
    for ax, (title, weights, behaviour) in zip(axes[0], panels):
        ax.plot(steps, weights, "o-", label="weights only")
        ax.plot(steps, behaviour, "x--", label="behaviour" if "OV" not in title else "IC-recall accuracy")
        ax.set(title=title, xlabel="fine-tuning step")
        ax.legend(fontsize=7)
    return fig
