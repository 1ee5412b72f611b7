"""What the probe scripts do, as library functions: find checkpoints, check outputs, patch by role, build reports.

``probes/*.py`` only parse arguments, call these and write files, so
everything they compute can be imported and tested:

* **checkpoint discovery** -- a path is one checkpoint (a directory holding
  ``config.json``) or a *series* (a directory of checkpoints, ordered by the
  ``step`` in their metrics, else the last number in their name);
  :func:`find_checkpoints` ignores hidden leftovers of interrupted saves;
* **output preflight** -- :func:`output_dir` chooses or checks the output
  directory and :func:`check_writable_dir` proves it can be written *before*
  any work, without creating it;
* **prompts** -- a probe seeded ``S`` samples its prompts from
  ``derive_seed(S, "analysis")`` and corrupts them with
  ``derive_seed(S, "corrupt")`` (:mod:`icr_interp.seeds`);
* **analyses** -- :func:`role_patching` (exact or attribution, per corruption),
  :func:`circuit_series` over a series; the report page itself is
  :func:`icr_interp.viz.model_report.checkpoint_report`, which
  computes everything a checkpoint's HTML report shows and hands it to
  :mod:`icr_interp.viz.report` to render.

Bad input (a path that is not a checkpoint, an output that cannot be written)
raises :class:`ProbeInputError` with one line; the scripts exit 2 on it.
"""

import json
import re
from dataclasses import dataclass
from pathlib import Path

from icr_interp.plumbing import check_int
from icr_interp.seeds import derive_seed
from icr_interp.storage import preflight
from icr_interp.storage.checkpoint import CONFIG, is_checkpoint
from icr_interp.storage.jsonio import json_safe  # noqa: F401 -- NaN as null for strict JSON (defined once)
from icr_interp.task import limits

RUNS = Path("runs")  # default parent of output directories
KINDS = {"relation": ("relation",), "query": ("query",), "both": ("relation", "query")}  # --corruption choices


class ProbeInputError(ValueError):
    """A bad probe input (path, output directory), found before any work; one line."""


# ------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint of a directory of checkpoints."""

    name: str  # its directory name
    step: int | None  # training step (metrics "step", else the last number in its name, else train.steps)
    path: Path  # its directory


def checkpoint_kind(path: Path) -> str:
    """``"checkpoint"`` or ``"series"`` (a directory of checkpoints); ProbeInputError otherwise."""
    try:
        path = preflight.check_path(path, "checkpoint")
    except ValueError as e:
        raise ProbeInputError(str(e)) from None
    if not path.exists():
        raise ProbeInputError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise ProbeInputError(f"not a checkpoint: {path} is a file (a checkpoint is a directory with {CONFIG} "
                              "and model.safetensors)")
    if (path / CONFIG).is_file():
        return "checkpoint"  # the path named: loading says what is wrong with it, if anything
    if _children(path):
        return "series"
    raise ProbeInputError(f"no checkpoints in {path}: neither it nor any subdirectory has a {CONFIG}")


def _children(path: Path) -> list[Path]:
    """Checkpoint subdirectories, hidden ones (interrupted saves: .NAME.old-*, .NAME.tmp-*) excluded."""
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return []
    return [p for p in entries if not p.name.startswith(".") and is_checkpoint(p)]


def _section(config: dict, key: str) -> dict:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def _int(value) -> int | None:
    try:
        return check_int(value, "step")
    except ValueError:
        return None


def checkpoint_step(path: Path) -> int | None:
    """The training step of a checkpoint: its metrics' ``step``, else the last number in its name, else train.steps."""
    try:
        config = json.loads((Path(path) / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        config = {}
    config = config if isinstance(config, dict) else {}
    step = _int(_section(config, "metrics").get("step"))
    if step is not None:
        return step
    numbers = re.findall(r"\d+", Path(path).name)
    return int(numbers[-1]) if numbers else _int(_section(config, "train").get("steps"))


def find_checkpoints(path: Path) -> list[CheckpointEntry]:
    """The checkpoints in the subdirectories of ``path``, by step (unknown steps last, then by name)."""
    entries = [CheckpointEntry(p.name, checkpoint_step(p), p) for p in _children(Path(path))]
    return sorted(entries, key=lambda e: (e.step is None, e.step if e.step is not None else 0, e.name))


def run_seed(checkpoint) -> int:
    """The seed of the run that produced a loaded checkpoint (its metrics' ``seed``; 0 if none was recorded)."""
    seed = _int(checkpoint.metrics.get("seed"))
    return seed if seed is not None and seed >= 0 else 0


# ------------------------------------------------------------------ output directory
def output_dir(out: Path | None, force: bool, prefix: str, checkpoint: Path) -> Path:
    """Where to write: ``out`` (checked), or a fresh ``runs/PREFIX-NAME[-i]``; writable (:func:`check_writable_dir`).

    An existing non-empty ``out`` is refused unless ``force``; it may never be
    the checkpoint itself (its files would be mixed with the analysis').
    """
    if out is None:
        base = RUNS / f"{prefix}-{Path(checkpoint).resolve().name or 'checkpoint'}"
        candidate, i = base, 2
        while _non_empty(candidate) or candidate.is_file():
            candidate, i = base.with_name(f"{base.name}-{i}"), i + 1
        check_writable_dir(candidate, "output directory")
        return candidate
    try:
        out = preflight.check_path(out, "--out")
        if out.is_symlink() and not out.exists():
            raise ValueError(f"--out {out} is a dangling symbolic link (to a missing {Path(out).readlink()})")
    except ValueError as e:
        raise ProbeInputError(str(e)) from None
    if out.exists() and not out.is_dir():
        raise ProbeInputError(f"--out {out} exists and is not a directory")
    if out.exists() and Path(checkpoint).exists() and out.resolve() == Path(checkpoint).resolve():
        raise ProbeInputError(f"--out {out} is the checkpoint directory itself; choose another")
    if _non_empty(out) and not force:
        raise ProbeInputError(f"--out {out} is not empty; pass --force to write into it")
    check_writable_dir(out, "--out")
    return out


def check_writable_dir(path: Path, what: str = "directory") -> None:
    """ProbeInputError unless files can be created in ``path`` (or, if it does not exist yet, where it would go).

    Nothing is left behind: the probe is an unnamed temporary file in the
    directory that exists (the output directory itself is not created).
    """
    try:
        preflight.check_path(path, what)
    except ValueError as e:
        raise ProbeInputError(str(e)) from None
    path = Path(path)
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        raise ProbeInputError(f"{what} {path}: {existing} is not a directory")
    try:
        preflight.output_dir(path, what)
    except ValueError as e:
        raise ProbeInputError(str(e)) from None


def _non_empty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


# ------------------------------------------------------------------ prompts and analyses
def probe_prompts(task, n_prompts: int, seed: int, device: str = "cpu"):
    """The prompts a probe seeded ``seed`` analyses, and the seed of their corruptions.

    Returns:
        ``(batch, corruption_seed)``: ``n_prompts`` prompts from
        ``derive_seed(seed, "analysis")``, and ``derive_seed(seed, "corrupt")``.

    Raises:
        ValueError: (one line, before sampling) if the analyses of that many prompts would not fit in memory
            (:func:`analysis_bytes`; the limit is :func:`icr_interp.task.limits.max_bytes`).
    """
    limits.check_bytes(analysis_bytes(task, n_prompts), f"analysing {n_prompts} prompts")
    batch = task.sample(n_prompts, seed=derive_seed(seed, "analysis"), device=device)
    return batch, derive_seed(seed, "corrupt")


def analysis_bytes(task, n_prompts: int, d_model: int | None = None, n_layers: int = 1, n_heads: int = 1) -> int:
    """Memory the analyses of ``n_prompts`` prompts hold at once (estimate).

    A patching run keeps three caches (clean, corrupted, patched), each with
    about 8 ``[batch pos d_model]`` activations and 3 ``[batch head pos pos]``
    patterns per layer, in float32; ``d_model`` defaults to the width the task's
    model would get (:func:`icr_interp.model.basis.default_d_model`).  Calibrated
    on the paper preset (d_model 448, 10 positions): role patching of 4,000
    prompts raised the peak RSS by 1.56 GB (390 KB a prompt); this estimates
    430 KB.
    """
    from icr_interp.model.basis import default_d_model

    d_model = d_model or default_d_model(task.vocab, task.n_ctx)
    per_prompt = n_layers * (8 * task.n_ctx * d_model + 3 * n_heads * task.n_ctx**2)
    return limits.prompt_bytes(n_prompts, task.n_ctx) + 3 * limits.FLOAT_BYTES * n_prompts * per_prompt


def role_patching(model, task, batch, kinds: tuple[str, ...], seed: int, method: str = "exact") -> dict:
    """Role-based patching of ``batch`` for each corruption kind: hook x role and query-row pattern x role.

    Args:
        model, task, batch: the model, its task (makes the corruptions), the clean prompts.
        kinds: corruption kinds (``"relation"``, ``"query"``).
        seed: seeds the corruptions.
        method: ``"exact"`` (:func:`icr_interp.analysis.causal.patching.patch_by_role`) or ``"attribution"``
            (:func:`~icr_interp.analysis.causal.patching.attribution_patch`, a first-order estimate).

    Returns:
        ``{kind: {"by_role": RolePatchResult, "pattern_by_role": RolePatchResult, "n_prompts": int,
        "n_dropped": int}}``: each kind patches the prompts that have its corruption
        (:meth:`~icr_interp.task.prompts.ICRecallTask.corrupt_pairs`); ``n_dropped`` counts the others.
    """
    from icr_interp.analysis.scoring.attention import pattern_name
    from icr_interp.analysis.causal.patching import attribution_patch, patch_by_role, patch_pattern_by_role

    if method not in ("exact", "attribution"):
        raise ValueError(f"method must be 'exact' or 'attribution', got {method!r}")
    pattern_hooks = [pattern_name(layer) for layer in range(model.cfg.n_layers)]
    results = {}
    for kind in kinds:
        clean, corrupted, n_dropped = task.corrupt_pairs(batch, kind, seed=seed)
        if method == "exact":
            results[kind] = dict(by_role=patch_by_role(model, clean, corrupted),
                                 pattern_by_role=patch_pattern_by_role(model, clean, corrupted))
        else:
            results[kind] = dict(by_role=attribution_patch(model, clean, corrupted),
                                 pattern_by_role=attribution_patch(model, clean, corrupted, hooks=pattern_hooks))
        results[kind].update(n_prompts=len(clean), n_dropped=n_dropped)
    return results


def role_patching_dict(results: dict) -> dict:
    """:func:`role_patching`'s results as JSON-able dicts (results ``to_dict``, counts as they are)."""
    return {kind: {name: r.to_dict() if hasattr(r, "to_dict") else r for name, r in res.items()}
            for kind, res in results.items()}


def role_patching_png(results: dict, n_prompts: int) -> bytes:
    """One heatmap per corruption kind of :func:`role_patching`'s results, stacked into one PNG."""
    from icr_interp.viz import figures

    return figures.stack_pngs([figures.figure_png(figures.plot_role_patching(r["by_role"], r["pattern_by_role"],
                                                                             kind, r.get("n_prompts", n_prompts)))
                               for kind, r in results.items()])


def circuit_series(entries: list[CheckpointEntry], n_prompts: int, seed: int, device: str = "cpu", log=None,
                   jobs: tuple[str, ...] = ("relation", "lookup")):
    """Circuit summaries (of ``jobs``) of a series' checkpoints, all on the same prompts (:func:`probe_prompts`)."""
    from icr_interp.storage.checkpoint import load_checkpoint
    from icr_interp.analysis.causal.circuit import circuit_summary
    from icr_interp.analysis.causal.circuit_series import CircuitSeries

    summaries = []
    for entry in entries:
        ck = load_checkpoint(entry.path, device=device)
        batch, corruption_seed = probe_prompts(ck.task, n_prompts, seed, device)
        summaries.append(circuit_summary(ck.model, ck.task, batch, seed=corruption_seed, jobs=jobs,
                                         checkpoint=entry.name, step=entry.step))
        if log is not None:
            log(f"{entry.name} (step {entry.step}): {summaries[-1].verdict}")
    return CircuitSeries([e.name for e in entries], [e.step for e in entries], summaries)


def attention_png(model, batch, layers: list[int] | None = None, note: str = "") -> bytes:
    """The mean prediction row by role of every head of ``layers``, as a grid of small bar charts (one PNG,
    bounded in pixels: :func:`icr_interp.viz.grids.plot_head_grid`).

    ``layers`` default: every layer of a model with at most :data:`~icr_interp.viz.grids.MAX_LAYERS`, else
    that many evenly spaced ones (first and last included), said in the figure.
    """
    from icr_interp.analysis.scoring.attention import query_rows
    from icr_interp.viz import figures, grids
    from icr_interp.viz.labels import slot_labels
    from icr_interp.viz.views import gather_slots

    n_layers = model.cfg.n_layers
    if layers is None:
        m = grids.MAX_LAYERS
        layers = list(range(n_layers)) if n_layers <= m else sorted({round(i * (n_layers - 1) / (m - 1))
                                                                     for i in range(m)})
        if n_layers > m:
            note = note or f"{len(layers)} evenly spaced layers of {n_layers}"
    cpu = batch.to("cpu")
    every = query_rows(model, batch)
    rows = {layer: gather_slots(every[layer].detach().float().cpu().transpose(0, 1), cpu) for layer in layers}
    return figures.figure_png(grids.plot_head_grid(rows, slot_labels(batch), len(batch), note), dpi=grids.DPI)
