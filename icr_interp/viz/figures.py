"""matplotlib figures: query-row attention, patching heatmaps, training curves, circuit series.

Every function *returns* a ``Figure`` built on the Agg canvas without pyplot,
so importing this module never changes a notebook's backend and nothing is
shown or saved behind the caller's back; in Jupyter run ``%matplotlib inline``
(or ``display(fig)``) to show one, or :func:`figure_png` for its PNG bytes.
"""

import io
import re

import numpy as np
from jaxtyping import Float
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from torch import Tensor

ROLE_COLORS = {"s": "#4477aa", "a": "#ee6677", "query": "#228833", "<bos>": "#999999", "other": "#bbbbbb"}


def _numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def new_figure(width: float, height: float, **subplots) -> tuple[Figure, np.ndarray]:
    """A figure on the Agg canvas (no pyplot, no display) and its axes, always as an array."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(squeeze=False, **subplots)
    return fig, axes


def _role(label: str) -> str:
    if label.startswith("query"):
        return "query"
    if label.startswith("<bos>"):
        return "<bos>"
    m = re.match(r"([sa])\d", label)
    return m.group(1) if m else "other"


def plot_query_attention(rows: Float[Tensor | np.ndarray, "*examples slot"], labels: list[str],
                         title: str = "query attention") -> Figure:
    """Query-row attention: a heatmap of examples x slots, or a bar chart of one (mean) row.

    Args:
        rows: ``[examples slot]`` (heatmap, with a colour bar) or ``[slot]``
            (bars coloured by role: subjects blue, answers red, query green).
        labels: one label per slot (:func:`~icr_interp.viz.slot_labels` or
            :func:`~icr_interp.viz.role_labels`).
        title: axes title (say how many prompts it shows).
    """
    data = _numpy(rows)
    if data.ndim not in (1, 2) or data.shape[-1] != len(labels):
        raise ValueError(f"rows must be [slot] or [examples slot] with {len(labels)} slots, got shape {data.shape}")
    fig, axes = new_figure(max(4.0, 0.45 * len(labels) + 1.5), 3.0 if data.ndim == 1 else 1.2 + 0.22 * len(data))
    ax = axes[0, 0]
    if data.ndim == 1:
        ax.bar(range(len(labels)), data, color=[ROLE_COLORS[_role(s)] for s in labels])
        ax.set_ylabel("attention")
        ax.set_ylim(0, max(1e-9, float(data.max())) * 1.1)
    else:
        im = ax.imshow(data, aspect="auto", cmap="viridis", vmin=0, vmax=max(1e-9, float(data.max())),
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label="attention")
        ax.set_ylabel("example")
    ax.set_xticks(range(len(labels)), labels, rotation=60 if max(map(len, labels)) > 3 else 0, fontsize=8)
    ax.set_title(title)
    return fig


def plot_patching(matrix: Float[Tensor | np.ndarray, "rows cols"], row_labels: list[str] | None = None,
                  col_labels: list[str] | None = None, title: str = "") -> Figure:
    """Heatmap of a patching result, diverging colours centred at 0 (values annotated when few).

    Args:
        matrix: ``[rows cols]`` effects (e.g. hook x position).
        row_labels, col_labels: tick labels (default: indices).
        title: axes title.
    """
    data = _numpy(matrix)
    if data.ndim != 2:
        raise ValueError(f"matrix must be 2-D, got shape {data.shape}")
    n_rows, n_cols = data.shape
    for name, labels, n in (("row_labels", row_labels, n_rows), ("col_labels", col_labels, n_cols)):
        if labels is not None and len(labels) != n:
            raise ValueError(f"{name} has {len(labels)} entries for {n} {name[:3]}s")
    fig, axes = new_figure(min(14.0, 2.5 + 0.55 * n_cols + 0.06 * max(map(len, row_labels or [""]))),
                        min(12.0, 1.5 + 0.4 * n_rows))
    ax = axes[0, 0]
    finite = data[np.isfinite(data)]
    bound = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    im = ax.imshow(data, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -bound, bound), aspect="auto",
                   interpolation="nearest")
    fig.colorbar(im, ax=ax)
    ax.set_xticks(range(n_cols), col_labels if col_labels is not None else range(n_cols), rotation=60, fontsize=8)
    ax.set_yticks(range(n_rows), row_labels if row_labels is not None else range(n_rows), fontsize=8)
    if n_rows * n_cols <= 120:  # readable numbers only on small grids
        for (r, c), v in np.ndenumerate(data):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 * bound else "black")
    ax.set_title(title, fontsize=10)
    return fig


def plot_role_patching(by_role, pattern_by_role, kind: str, n_prompts: int) -> Figure:
    """One heatmap of a corruption's role patching: hook rows, then query-row pattern rows, x roles.

    Args:
        by_role, pattern_by_role: :class:`~icr_interp.analysis.causal.patching.RolePatchResult` (same roles).
        kind: the corruption (``"relation"`` or ``"query"``), for the title.
        n_prompts: prompts the effects are averaged over, for the title.
    """
    matrix = np.concatenate([_numpy(by_role.values), _numpy(pattern_by_role.values)], axis=0)
    rows = list(by_role.components) + [f"{c} (query row)" for c in pattern_by_role.components]
    title = (f"{kind} swap: {by_role.method} patching ({by_role.mode}), mean of {n_prompts} prompts\n"
             f"0 = corrupted (logit diff {by_role.corrupted_value:.2f}), 1 = clean ({by_role.clean_value:.2f})")
    return plot_patching(matrix, rows, list(by_role.roles), title)


def plot_training_curves(history, keys: list[str] | None = None, step_key: str = "step") -> Figure:
    """Training curves, one panel per key, over steps.

    Args:
        history: a dict of equal-length lists (or an object with ``to_dict()``,
            e.g. :class:`icr_interp.training.trainer.History`).
        keys: which series (default: every numeric list but ``step_key``).
        step_key: the x axis (default ``"step"``; indices if absent).
    """
    hist = history.to_dict() if hasattr(history, "to_dict") else dict(history)
    if keys is None:
        keys = [k for k, v in hist.items() if k != step_key and _is_series(v)]
    missing = [k for k in keys if k not in hist]
    if missing or not keys:
        raise KeyError(f"history has no series {missing or 'to plot'}; it has {sorted(hist)}")
    fig, axes = new_figure(6.0, 1.2 + 1.6 * len(keys), nrows=len(keys), sharex=True)
    for ax, key in zip(axes[:, 0], keys):
        y = _numpy(hist[key])
        x = _numpy(hist[step_key]) if step_key in hist else np.arange(len(y))
        if len(x) != len(y):
            raise ValueError(f"series {key!r} has {len(y)} values for {len(x)} steps")
        ax.plot(x, y, lw=1.2)
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(step_key)
    return fig


def _is_series(v) -> bool:
    try:
        return _numpy(v).ndim == 1
    except (TypeError, ValueError):
        return False


SERIES_TITLES = dict(relation="relation swap (relation inference): normalised patching effect",
                     lookup="query swap (answer lookup): normalised patching effect",
                     accuracy_drop="ablation: accuracy drop on clean prompts")


def plot_circuit_series(series, columns: tuple[str, ...] = ("relation", "lookup", "accuracy_drop"),
                        n_prompts: int | None = None) -> Figure:
    """Every circuit component against the training step, one panel per column.

    Args:
        series: a :class:`~icr_interp.analysis.causal.circuit_series.CircuitSeries`.
        columns: which columns of the circuit summaries (patching effects, ablation).
        n_prompts: prompts each checkpoint was measured on, for the titles.
    """
    fig, axes = new_figure(9.0, 0.8 + 2.4 * len(columns), nrows=len(columns), sharex=True)
    axes = axes[:, 0]
    x = series.x()
    labels = {r.component.key: r.component.label for s in series.summaries for r in s.rows}
    # Components often coincide (0 or 1): distinct markers and dashes keep every line visible.
    styles = [(m, ls) for ls in ("-", "--", ":") for m in ("o", "s", "^", "D", "v", "x", "P", "*")]
    suffix = f" ({n_prompts} prompts per checkpoint)" if n_prompts is not None else ""
    for ax, column in zip(axes, columns):
        for i, component in enumerate(series.components):
            marker, ls = styles[i % len(styles)]
            ax.plot(x, series.values(component, column), marker=marker, ls=ls, ms=5, lw=1.2, alpha=0.85,
                    markerfacecolor="none", label=f"{component}: {labels[component]}")
        ax.set_title(SERIES_TITLES.get(column, column) + suffix, fontsize=10)
        ax.axhline(0, color="#999", lw=0.6)
        ax.axhline(1, color="#999", lw=0.6, ls=":")
        values = [v for c in series.components for v in series.values(c, column)]
        if all(-0.1 <= v <= 1.1 for v in values):
            ax.set_ylim(-0.1, 1.1)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("training step" if all(s is not None for s in series.steps) else "checkpoint")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def stack_pngs(pngs: list[bytes]) -> bytes:
    """PNG images stacked vertically (left-aligned on white), pixels unchanged."""
    from matplotlib import image

    if len(pngs) == 1:
        return pngs[0]
    arrays = [image.imread(io.BytesIO(p), format="png")[..., :3] for p in pngs]
    width = max(a.shape[1] for a in arrays)
    padded = [np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=1.0) for a in arrays]
    buf = io.BytesIO()
    image.imsave(buf, np.concatenate(padded, axis=0), format="png")
    return buf.getvalue()
