"""Static HTML reports of precomputed results: one self-contained file that opens offline.

This module renders; it never runs a model or an analysis.  Whoever builds a
report computes the numbers first (held-out accuracy with
:func:`icr_interp.training.trainer.evaluate`, template scores, patching, a circuit
summary, attention patterns) and passes them to the section builders below,
each of which returns an HTML fragment; :func:`render_report` joins them into
one document with circuitsvis's bundled script inlined once and every figure
as a base64 PNG, and :func:`write_report` writes it atomically
(:mod:`icr_interp.storage.atomic`).  Every caption says how many prompts it shows.

``icr_interp.viz.model_report.checkpoint_report`` is the one caller that computes
everything a checkpoint's report needs.
"""

import base64
from pathlib import Path

from jaxtyping import Float
from matplotlib.figure import Figure
from torch import Tensor

from icr_interp.storage.atomic import write_text
from icr_interp.viz import figures, tables
from icr_interp.viz.escape import attr, text
from icr_interp.viz.offline import document, fragment
from icr_interp.viz.views import AttentionView


def img(fig: Figure, alt: str) -> str:
    """An ``<img>`` holding the figure's PNG as a data URI."""
    data = base64.b64encode(figures.figure_png(fig)).decode("ascii")
    return f'<img alt="{attr(alt)}" src="data:image/png;base64,{data}">'


def _figure_block(fig: Figure, caption: str) -> str:
    return f'<figure class="figs">{img(fig, caption)}</figure>'  # the figure's own title says what it shows


def render_report(title: str, sections: list[str]) -> str:
    """The complete page: a title, then the given sections (HTML fragments from this module)."""
    return document(title, f"<h1>{text(title)}</h1>\n" + "\n".join(sections))


def write_report(path: str | Path, title: str, sections: list[str]) -> Path:
    """:func:`render_report` written atomically to ``path`` (a directory is refused)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"report path is a directory: {path}")
    return write_text(path, render_report(title, sections))


# ------------------------------------------------------------------ sections
def summary_section(info: dict, heading: str = "Model and prompts") -> str:
    """A key/value table (model sizes, prompts, the example shown, ...)."""
    return f"<h2>{text(heading)}</h2>\n" + tables.value_html(info)


def accuracy_section(evaluation: dict, seed: int | None = None, stored: float | None = None) -> str:
    """The model's held-out accuracy and loss, as :func:`icr_interp.training.trainer.evaluate` returned them.

    Args:
        evaluation: ``{"accuracy", "loss", "n_prompts", ...}``.
        seed: the seed the held-out prompts were drawn with.
        stored: the accuracy recorded in the checkpoint, shown for comparison.
    """
    where = f"{evaluation['n_prompts']} fresh held-out prompts" + (f" (evaluate seed {seed})" if seed is not None
                                                                  else "")
    n, acc, z = evaluation["n_prompts"], evaluation["accuracy"], 1.96
    centre, half = acc + z * z / (2 * n), z * (acc * (1 - acc) / n + z * z / (4 * n * n)) ** 0.5  # Wilson
    ceiling = evaluation.get("ceiling")
    best = (f"; the best any model could reach on these prompts (Bayes ceiling) is {ceiling:.3f}"
            if isinstance(ceiling, float) else "")
    line = (f'<p class="headline">Held-out accuracy: <b id="accuracy">{acc:.4f}</b> '
            f"(95% interval {(centre - half) / (1 + z * z / n):.3f}-{(centre + half) / (1 + z * z / n):.3f}) "
            f"on {where}; loss {evaluation['loss']:.4f} nats{best}.</p>")
    if stored is not None:
        line += f"<p>Accuracy recorded in the checkpoint at training time: {stored:.4f}.</p>"
    return "<h2>Accuracy</h2>\n" + line


def attention_section(views: list[tuple[str, AttentionView]], intro: str = "", heading: str | None = "Attention"
                      ) -> str:
    """circuitsvis views (rendered from the page's inlined bundle), each under its caption."""
    parts = ([f"<h2>{text(heading)}</h2>"] if heading else []) + ([f"<p>{text(intro)}</p>"] if intro else [])
    for i, (caption, view) in enumerate(views):
        parts.append(f'<section class="view" id="view-{i}"><h3>{text(caption)}</h3>'
                     f"{fragment(view)}</section>")
    return "\n".join(parts)


MAX_HEAD_FIGURES = 4  # heads drawn one figure pair each; more heads get one grid of small bar charts


def query_rows_section(rows: Float[Tensor, "batch head slot"], labels: list[str], layer: int,
                       max_examples: int = 32) -> str:
    """One layer's query rows: the mean row per head (table and bars) and the first prompts (heatmap)."""
    n = rows.shape[0]
    mean = rows.mean(0).numpy()
    names = [f"L{layer}H{h}" for h in range(rows.shape[1])]
    shown = min(n, max_examples)
    parts = [f"<h3>Layer {layer}: query attention row</h3>",
             tables.matrix_table(mean, names, labels, caption=f"mean query row over {n} prompts (role-aligned)")]
    if len(names) > MAX_HEAD_FIGURES:  # a real model's many heads: one bounded grid of bar charts
        from icr_interp.viz.grids import plot_head_grid

        parts.append(_figure_block(plot_head_grid({layer: rows}, labels, n), f"layer {layer}: mean query rows"))
        return "\n".join(parts)
    for h, name in enumerate(names):
        bars = figures.plot_query_attention(mean[h], labels, title=f"{name}: mean query row ({n} prompts)")
        heat = figures.plot_query_attention(rows[:max_examples, h], labels,
                                            title=f"{name}: query rows of the first {shown} of {n} prompts")
        parts.append('<div class="figs">'
                     + _figure_block(bars, f"{name}: mean query row over {n} prompts")
                     + _figure_block(heat, f"{name}: query rows of the first {shown} of {n} prompts") + "</div>")
    return "\n".join(parts)


def prediction_rows_section(rows: Float[Tensor, "batch head slot"], labels: list[str], layer: int,
                            captions: list[str], tokens: list[list[str]] | None = None) -> str:
    """One layer's prediction rows: per head, the query row of the first prompts (each with its hidden relation
    and answer), role-aligned, and the mean row with its spread over every prompt."""
    n, parts = rows.shape[0], []
    for h in range(rows.shape[1]):
        caption = (f"L{layer}H{h}: where the query (the position that predicts the answer) attends, by role; "
                   f"the first {len(captions)} of {n} prompts, then the mean over all {n}")
        parts.append(tables.prediction_table(rows[:, h], labels, captions, tokens, caption))
    return f"<h3>Layer {layer}: prediction rows</h3>\n" + "\n".join(parts)


def scores_section(scores, n_prompts: int | None = None) -> str:
    """Template scores as a table (:func:`~icr_interp.viz.tables.scores_table`); a plain dict as key/values."""
    d = scores.to_dict() if hasattr(scores, "to_dict") else scores
    if isinstance(d, dict) and {"per_head", "templates", "layer", "head"} <= set(d):
        n = d.get("n_examples", n_prompts)
        caption = (f"scored on {n} prompts; * = the head the headline reports (layer {d['layer']}, head "
                   f"{d['head']}: by default the last layer's head with the most attention on the context pairs, "
                   "not a head chosen by its score); pairwise = 1 - TV to the nearest pairwise template; null = the "
                   "same score with the pairs re-paired; p = the test that the pairing beats its null; balance = "
                   "within-pair balance")
        rows = d["per_head"]
        def edge(r):  # the pairing effect in attention mass where the scores give it
            return r.get("effect_mass", r["pairwise"] - r["pairwise_null"])

        edges = sorted(rows, key=lambda r: -edge(r))
        n_pair = sum(r["best"] == "pairwise" for r in rows)
        what = "pairing effect in attention mass" if "effect_mass" in rows[0] else "pairwise - null"
        lead = (f"<p><b>{n_pair} of {len(rows)} heads</b> are pairwise by the null rule (below the table); the "
                f"largest edge ({what}) is {edge(edges[0]):+.3f}, at L{edges[0]['layer']}H{edges[0]['head']}."
                + (" Rows are sorted by that edge, largest first." if len(rows) > 40 else "") + "</p>\n")
        if len(rows) > 40:  # a deep model: the heads that matter first
            d = dict(d, per_head=edges)
        body = lead + tables.scores_table(d, caption)
    else:
        body = f'<div class="scores">{tables.value_html(d)}</div>'
    return "<h2>Template scores</h2>\n" + body


def role_patching_section(results: dict, n_prompts: int) -> str:
    """Heatmaps of role patching: ``{kind: {"by_role": RolePatchResult, "pattern_by_role": RolePatchResult}}``."""
    grid = any("resid" in res for res in results.values())
    what = ("three panels per corruption: the residual stream entering each layer patched at each prompt role; "
            "each layer's attention and MLP output patched at the prediction position; each head's output (z) "
            "patched at the prediction position" if grid else
            "by hook x prompt role (and the query's attention row by source role)")
    parts = ["<h2>Activation patching</h2>",
             f"<p>Clean activations patched into corrupted prompts, {what}; the colour is the logit difference "
             "(clean answer - corrupted answer) at the prediction, normalised so that 0 = the corrupted run and "
             "1 = the clean run: a cell near 1 carries everything the corruption changed.</p>"]
    for kind, res in results.items():
        n = res.get("n_prompts", n_prompts)
        if "by_role" in res:
            fig = figures.plot_role_patching(res["by_role"], res["pattern_by_role"], kind, n)
        else:  # a real model's default grid (icr_interp.experiments.probe_grid)
            from icr_interp.viz.grids import plot_probe_grid

            fig = plot_probe_grid({p: res[p] for p in ("resid", "prediction", "heads") if p in res}, kind, n,
                                  res.get("n_requested"))
        asked = res.get("n_requested")
        fewer = f" (of {asked} asked; the others have no {kind} swap that keeps their token spans)" \
            if asked is not None and asked != n else ""
        parts.append(_figure_block(fig, f"{kind} swap: mean over {n} prompts{fewer}"))
        if "screen" in res:
            parts.append(f"<pre>{text(str(res['screen']))}</pre>")
    return "\n".join(parts)


def patching_section(patching, n_prompts: int | None = None) -> str:
    """Every numeric array of a nested patching result as a heatmap (:func:`~icr_interp.viz.tables.patching_panels`)."""
    panels, rest = tables.patching_panels(patching)
    parts = ["<h2>Activation patching</h2>"]
    suffix = f" (mean over {n_prompts} prompts)" if n_prompts is not None else ""
    for title, matrix, rows, cols in panels:
        parts.append(_figure_block(figures.plot_patching(matrix, rows, cols, title + suffix), title + suffix))
    if rest:
        parts.append(tables.value_html(rest))
    return "\n".join(parts)


def circuit_section(summary) -> str:
    """A circuit summary: each component's share of relation inference and of answer lookup."""
    d = summary.to_dict() if hasattr(summary, "to_dict") else summary
    caption = (f"denoising patching on {d['n_prompts']} prompts (0 = corrupted, 1 = clean) and "
               f"{d['ablation_method']}-ablation (base accuracy {d['base_accuracy']:.3f})")
    return "<h2>Circuit summary</h2>\n" + tables.circuit_table(d, caption)
