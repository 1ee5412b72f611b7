"""Figures of deep models, bounded in pixels: the probe's default patching grid and attention as a grid of heads.

A 30-layer model drawn one panel per head and layer is a 510 x 303,480-pixel PNG nobody can look at (and
that numpy cannot always allocate).  These figures draw *small multiples* instead -- one axes per layer (or
per head) in a grid whose size is capped -- so every figure stays within :data:`MAX_PIXELS` pixels a side
whatever the model, and says in its title what it leaves out.
"""

import math
import textwrap

import numpy as np
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from icr_interp.viz.figures import ROLE_COLORS, _numpy, _role, new_figure

MAX_PIXELS = 2400  # the longest side of any figure here, at DPI
DPI = 100
MAX_LAYERS = 4  # layers of a head grid (the caller picks which)
HEADS_PER_ROW = 8  # heads per row of a head grid


def _bounded(width: float, height: float) -> tuple[float, float]:
    """Figure inches scaled down, keeping the aspect, so neither side exceeds MAX_PIXELS at DPI."""
    scale = min(1.0, MAX_PIXELS / (DPI * max(width, height)))
    return width * scale, height * scale


def _heatmap(fig: Figure, ax, data: np.ndarray, xlabels: list[str], title: str, ylabel: str = "layer") -> None:
    finite = data[np.isfinite(data)]
    bound = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1.0
    im = ax.imshow(data, cmap="RdBu_r", norm=TwoSlopeNorm(0.0, -bound, bound), aspect="auto", origin="lower",
                   interpolation="nearest")
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=60 if max(map(len, xlabels)) > 3 else 0, fontsize=7)
    step = max(1, data.shape[0] // 15)
    ax.set_yticks(range(0, data.shape[0], step), [str(i) for i in range(0, data.shape[0], step)], fontsize=7)
    ax.set(title=title, ylabel=ylabel)
    ax.title.set_fontsize(9)


def plot_probe_grid(parts: dict, kind: str, n_prompts: int, n_requested: int | None = None) -> Figure:
    """The probe's default grid for one corruption, three heatmaps side by side (0 = corrupted, 1 = clean).

    Args:
        parts: ``{"resid": r, "prediction": r, "heads": r}`` of role-patching results
            (:func:`icr_interp.experiments.probe_grid.run_part`) or their ``to_dict()``; missing parts are skipped.
        kind: the corruption, for the title.
        n_prompts, n_requested: prompts patched and prompts asked for (said when fewer).
    """
    parts = {k: (v.to_dict() if hasattr(v, "to_dict") else v) for k, v in parts.items()}
    panels = []
    if "resid" in parts:
        r = parts["resid"]
        panels.append((_numpy(r["values"]), list(r["roles"]), "residual stream (resid_pre) x role", "layer"))
    if "prediction" in parts:
        r = parts["prediction"]
        sites = list(dict.fromkeys(c.rpartition("hook_")[2] for c in r["components"]))
        data = _numpy(r["values"])[:, 0].reshape(-1, len(sites))
        panels.append((data, sites, "attention / MLP output at the prediction", "layer"))
    if "heads" in parts:
        r = parts["heads"]
        n_heads = len({c.rpartition(":h")[2] for c in r["components"]})
        data = _numpy(r["values"])[:, 0].reshape(-1, n_heads)
        panels.append((data, [str(h) for h in range(n_heads)], "each head's z at the prediction (x = head)", "layer"))
    if not panels:
        raise ValueError("no grid part to draw (expected resid, prediction or heads)")
    widths = [max(2.0, 0.35 * p[0].shape[1] + 1.5) for p in panels]
    n_layers = max(p[0].shape[0] for p in panels)
    fig, axes = new_figure(*_bounded(sum(widths) + 1.0, min(9.0, 2.0 + 0.18 * n_layers)), ncols=len(panels),
                           gridspec_kw=dict(width_ratios=widths))
    for ax, (data, labels, title, ylabel) in zip(axes[0], panels):
        _heatmap(fig, ax, data, labels, title, ylabel)
    first = next(iter(parts.values()))
    fewer = f" (of {n_requested} asked)" if n_requested is not None and n_requested != n_prompts else ""
    method = first.get("method", "exact")
    fig.suptitle(f"{kind} swap: {method} patching, mean of {n_prompts} prompts{fewer}; 0 = corrupted "
                 f"(logit diff {first['corrupted_value']:.2f}), 1 = clean ({first['clean_value']:.2f})"
                 + ("" if first.get("reliable", True) else "\n" + textwrap.fill(
                     "UNRELIABLE: " + str(first.get("reason", "")), width=int(14 * sum(widths)),
                     max_lines=2, placeholder=" ... (patching.json)")), fontsize=9)
    return fig


def plot_head_grid(rows: dict, labels: list[str], n_prompts: int, note: str = "") -> Figure:
    """Mean prediction row of every head of the given layers, one small bar chart per head, in a grid.

    Args:
        rows: ``{layer: [batch head slot]}`` (tensors or arrays) prediction-row attention by role slot (at most
            :data:`MAX_LAYERS` layers are drawn; the first ones given).
        labels: the slot labels.
        n_prompts: prompts averaged, for the title.
        note: why these layers (printed under the title).
    """
    layers = list(rows)[:MAX_LAYERS]
    if not layers:
        raise ValueError("no layer to draw")
    n_heads = _numpy(rows[layers[0]]).shape[1]
    per_row = min(HEADS_PER_ROW, n_heads)
    lines = math.ceil(n_heads / per_row)
    fig, axes = new_figure(*_bounded(1.0 + 2.1 * per_row, 1.0 + 1.7 * lines * len(layers)),
                           nrows=lines * len(layers), ncols=per_row, sharey=True)
    colors = [ROLE_COLORS[_role(s)] for s in labels]
    for ax in axes.flat:
        ax.set_visible(False)
    for i, layer in enumerate(layers):
        mean = _numpy(rows[layer]).mean(0)  # [head slot]
        for h in range(n_heads):
            ax = axes[i * lines + h // per_row, h % per_row]
            ax.set_visible(True)
            ax.bar(range(len(labels)), mean[h], color=colors)
            ax.set_title(f"L{layer}H{h}", fontsize=8)
            ax.set_xticks(range(len(labels)), labels if len(labels) <= 12 else [""] * len(labels), rotation=90,
                          fontsize=5)
            ax.tick_params(axis="y", labelsize=6)
    skipped = f"; {len(rows) - len(layers)} more layers not drawn" if len(rows) > len(layers) else ""
    fig.suptitle(f"mean prediction row by role ({n_prompts} prompts), layers {', '.join(map(str, layers))}"
                 f"{skipped}" + (f"\n{note}" if note else ""), fontsize=9)
    return fig
