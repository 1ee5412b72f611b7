"""HTML tables of precomputed results: template scores, matrices, circuit summaries, plain values.

Pure rendering: every function takes numbers someone else computed and
returns an HTML string (every string escaped by :mod:`icr_interp.viz.escape`; no scripts).  A value that
was not measured (``None``, NaN) reads "not measured", never ``nan``.  :func:`patching_panels` splits a
nested patching result into the 2-D arrays a report draws as heatmaps and
the rest it shows as a table.
"""

import json
import math

import numpy as np

from icr_interp.storage.jsonio import plain
from icr_interp.viz.escape import text

NOT_MEASURED = "not measured"
SCORE_COLUMNS = (("pairwise", "pairwise"), ("pairwise_null", "null"), ("p_value", "p"), ("balance", "balance"),
                 ("pair_mass", "pair mass"), ("best", "best"))
MEAN_COLUMNS = tuple(c for c in SCORE_COLUMNS if c[0] != "p_value")  # the mean row is one row: no test over examples


def measured(v) -> bool:
    """False for a value that was not measured: None or a NaN."""
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def cell(v) -> str:
    """One value as table-cell text: 4 significant digits for floats, escaped strings."""
    if not measured(v):
        return f'<span class="na">{NOT_MEASURED}</span>'
    if isinstance(v, bool):
        return text(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return text(v)
    return value_html(v)


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def value_html(v) -> str:
    """A table for a dict, a list of dicts, a vector or a matrix; escaped text otherwise."""
    v = plain(v)
    if _scalar(v):
        return cell(v)
    if isinstance(v, dict):
        rows = "".join(f"<tr><th>{text(k)}</th><td>{value_html(x)}</td></tr>" for k, x in v.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        cols = list(dict.fromkeys(k for x in v for k in x))
        head = "".join(f"<th>{text(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{cell(x.get(c, ''))}</td>" for c in cols) + "</tr>" for x in v)
        return f'<table class="grid"><tr>{head}</tr>{body}</table>'
    if isinstance(v, list) and all(_scalar(x) for x in v):
        return '<table class="grid"><tr>' + "".join(f"<td>{cell(x)}</td>" for x in v) + "</tr></table>"
    if isinstance(v, list) and all(isinstance(r, list) and all(_scalar(x) for x in r) for r in v):
        body = "".join("<tr>" + "".join(f"<td>{cell(x)}</td>" for x in r) + "</tr>" for r in v)
        return f'<table class="grid">{body}</table>'
    return f"<pre>{text(json.dumps(v, indent=1, default=str))}</pre>"


def _caption(caption: str | None) -> str:
    return f"<caption>{text(caption)}</caption>" if caption else ""


def matrix_table(matrix, row_labels: list[str], col_labels: list[str], caption: str | None = None) -> str:
    """A labelled matrix, three decimals."""
    matrix = np.asarray(plain(matrix), dtype=float)
    head = "<tr><th></th>" + "".join(f"<th>{text(c)}</th>" for c in col_labels) + "</tr>"
    body = "".join(f"<tr><th>{text(r)}</th>" + "".join(f"<td>{x:.3f}</td>" for x in row) + "</tr>"
                   for r, row in zip(row_labels, matrix))
    return f'<table class="grid">{_caption(caption)}{head}{body}</table>'


def score_rule(d: dict) -> str:
    """The rule that decides a head's "best" template, in words, with the thresholds ``d`` was scored under."""
    if "pairing_rule" in d:  # scores of this release: the pairing test and its controls (analysis.pairing_evidence)
        rule = d["pairing_rule"]
    else:  # scores written before the pairing test
        rule = (f"the pairing beats its null (pairwise scores of the same rows re-paired) with p <= "
                f"{d.get('null_alpha', 0.01):g} and by pairwise - null >= {d.get('null_min_effect', 0.05):g}")
    return (f"best = the template nearest in total variation (TV), except that \"pairwise\" must earn its name: "
            f"{rule}, and the uniform template is more than {d.get('uniform_margin', 0.02):g} further away; "
            "otherwise the nearest other template")


def scores_table(scores, caption: str | None = None) -> str:
    """Template scores of every head as one table: per example (score, null, p), TV to each template, mean row.

    Args:
        scores: a :class:`~icr_interp.analysis.scoring.templates.TemplateScores` or its ``to_dict()``.
        caption: the table caption (say how many prompts were scored).

    The head that matters (the scores' headline) is marked with ``*`` and bold.  Every pairwise score stands
    beside its null and p-value; the rule that decided "best" is printed under the table.
    """
    d = plain(scores)
    templates = list(d["templates"])
    head = ('<tr><th rowspan="2">layer</th><th rowspan="2">head</th>'
            f'<th colspan="{len(SCORE_COLUMNS)}">per example (mean over prompts)</th>'
            f'<th colspan="{len(templates)}">total variation to template (lower: closer)</th>'
            f'<th colspan="{len(MEAN_COLUMNS)}">mean row</th></tr><tr>'
            + "".join(f"<th>{name}</th>" for _, name in SCORE_COLUMNS)
            + "".join(f"<th>{text(t)}</th>" for t in templates)
            + "".join(f"<th>{name}</th>" for _, name in MEAN_COLUMNS) + "</tr>")
    body = []
    for h in d["per_head"]:
        marked = (h["layer"], h["head"]) == (d["layer"], d["head"])
        cells = [f"{h['layer']}{'*' if marked else ''}", str(h["head"])]
        cells += [_score_cell(h.get(key), key) for key, _ in SCORE_COLUMNS]
        cells += [_score_cell(h["tv"][t]) for t in templates]
        cells += [_score_cell(h["mean_row"].get(key), key) for key, _ in MEAN_COLUMNS]
        body.append(f'<tr{" class=marked" if marked else ""}>' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return (f'<div class="wide"><table class="scores">{_caption(caption)}{head}{"".join(body)}</table></div>\n'
            f'<p class="rule">{text(score_rule(d))}.</p>')


def _score_cell(v, key: str = "") -> str:
    if not measured(v):
        return f'<span class="na">{NOT_MEASURED}</span>'
    if key == "p_value":
        return f"{v:.4f}" if v >= 1e-4 else f"{v:.1e}"
    return f"{v:.3f}" if isinstance(v, float) else text(v)


# The components whose patched tokens a corruption leaves unchanged: their effect under it is zero by
# construction (a relation swap keeps the subjects and the query; a query swap keeps the context pairs),
# exactly so in one layer, where they are read straight from the embeddings.
UNCHANGED_BY = {"relation": ("subjects", "query"), "lookup": ("subjects", "answers", "context")}
ZERO_TOL = 1e-6


def zero_by_construction(component: str, job: str, value) -> bool:
    """A cell that is zero because the corruption did not touch the component's tokens (not evidence)."""
    return component in UNCHANGED_BY.get(job, ()) and measured(value) and abs(value) < ZERO_TOL


def circuit_table(summary, caption: str | None = None) -> str:
    """A :class:`~icr_interp.analysis.causal.circuit.CircuitSummary` (or its ``to_dict()``) as a table, verdict below.

    A job that was not measured reads "not measured"; a cell that is zero by construction
    (:func:`zero_by_construction`) is marked and explained under the table.
    """
    d = plain(summary)
    head = ("<tr><th>component</th><th>what it is</th><th>relation inference (relation swap)</th>"
            "<th>answer lookup (query swap)</th><th>accuracy when ablated</th></tr>")
    marked = False
    rows = []
    for r in d["rows"]:
        cells = []
        for job in ("relation", "lookup"):
            if zero_by_construction(str(r["component"]), job, r[job]):
                marked = True
                cells.append('<td class="construction" title="zero by construction">0 &dagger;</td>')
            else:
                cells.append(f"<td>{_score_cell(r[job])}</td>")
        rows.append(f'<tr><td class="text">{text(r["component"])}</td><td class="text">{text(r.get("label", ""))}'
                    f'</td>{"".join(cells)}<td>{_score_cell(r["ablated_accuracy"])}</td></tr>')
    note = ('<p class="note">&dagger; zero by construction: the swap leaves these tokens unchanged, so patching '
            "them cannot move the output; these cells are not evidence.</p>\n" if marked else "")
    return (f'<table class="circuit">{_caption(caption)}{head}{"".join(rows)}</table>\n{note}'
            f'<p class="verdict">Verdict: {text(d.get("verdict", ""))}</p>')


# ---------------------------------------------------------------- patching
_ROW_KEYS = ("row_labels", "rows", "hooks", "components")
_COL_KEYS = ("col_labels", "cols", "roles", "positions", "sources")
_NOT_PLOTTED = ("raw",)  # unnormalised copies of a plotted result (RolePatchResult.raw)


def _labels(d: dict, keys: tuple[str, ...], n: int, used: set) -> list[str] | None:
    for k in keys:
        if isinstance(d.get(k), list) and len(d[k]) == n:
            used.add(k)
            return [str(x) for x in d[k]]
    return None


def patching_panels(patching, name: str = "") -> tuple[list[tuple[str, np.ndarray, list | None, list | None]], dict]:
    """Split a patching result into heatmaps and everything else.

    Every numeric 2-D array inside ``patching`` (nested dicts allowed) becomes a
    heatmap named by its key path, with tick labels taken from sibling lists
    named ``row_labels``/``rows``/``hooks``/``components`` and
    ``col_labels``/``cols``/``roles``/``positions``/``sources`` of matching
    length.  Numeric 1-D arrays become one-row heatmaps.  Arrays under ``raw``
    (unnormalised copies) are dropped; the rest, label lists that served as
    ticks excepted, is returned as a dict.

    Returns:
        ``(panels, rest)``: panels are ``(title, matrix, row_labels, col_labels)``.
    """
    d = plain(patching)
    if not isinstance(d, dict):
        d = {name or "patching": d}
    panels, rest, used = [], {}, set()
    for key, value in d.items():
        path = f"{name}/{key}" if name else key
        matrix = None if key in _ROW_KEYS + _COL_KEYS else _numeric(value)
        if isinstance(value, dict):
            sub_panels, sub_rest = patching_panels(value, path)
            panels += sub_panels
            if sub_rest:
                rest[key] = sub_rest
        elif key in _NOT_PLOTTED:
            continue
        elif matrix is None:
            rest[key] = value
        elif matrix.ndim == 1:
            panels.append((path, matrix[None, :], None, _labels(d, _COL_KEYS, matrix.shape[0], used)))
        else:
            panels.append((path, matrix, _labels(d, _ROW_KEYS, matrix.shape[0], used),
                           _labels(d, _COL_KEYS, matrix.shape[1], used)))
    return panels, {k: v for k, v in rest.items() if k not in used}


def _numeric(value) -> np.ndarray | None:
    """A 1-D (length > 1) or 2-D float array, or None."""
    if not isinstance(value, list) or not value:
        return None
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if (arr.ndim == 2 or (arr.ndim == 1 and len(arr) > 1)) else None


# ---------------------------------------------------------------- prediction rows
def _shade(w: float, top: float) -> str:
    """A cell style whose blue deepens with the weight (relative to ``top``), text kept readable."""
    x = 0.0 if top <= 0 or not math.isfinite(w) else min(max(w / top, 0.0), 1.0)
    return f'style="background: rgba(31, 119, 180, {x:.2f}); color: {"#fff" if x > 0.55 else "#222"}"'


def prediction_table(rows, labels: list[str], captions: list[str], tokens: list[list[str]] | None = None,
                     caption: str | None = None) -> str:
    """The query (prediction) rows of some prompts, role-aligned, then the mean row and its spread.

    Args:
        rows: ``[prompt slot]`` weights of every prompt the mean is taken over (the first ``len(captions)``
            are shown one by one).
        labels: the slot roles (``<bos>, s1, a1, ..., query``).
        captions: one per shown prompt (its hidden relation and answer).
        tokens: per shown prompt, the token at each slot (shown in the cell above the weight).
        caption: the table caption.
    """
    rows = np.asarray(plain(rows), dtype=float)
    top = float(rows.max()) if rows.size else 1.0
    head = ("<tr><th>prompt</th><th>hidden relation &rarr; answer</th>"
            + "".join(f'<th class="role">{text(label)}</th>' for label in labels) + "</tr>")
    body = []
    for i, cap in enumerate(captions):
        toks = tokens[i] if tokens is not None else [""] * len(labels)
        cells = "".join(f'<td {_shade(w, top)}><span class="tok">{text(t)}</span>{w:.2f}</td>'
                        for w, t in zip(rows[i], toks))
        body.append(f'<tr><th>{i}</th><td class="text">{text(cap)}</td>{cells}</tr>')
    mean, sd = rows.mean(0), rows.std(0)
    cells = "".join(f"<td {_shade(m, top)}>{m:.2f}<br><small>&plusmn; {s:.2f}</small></td>" for m, s in zip(mean, sd))
    body.append(f'<tr class="mean"><th>mean</th><td class="text">over all {len(rows)} prompts (&plusmn; s.d.)</td>'
                f"{cells}</tr>")
    return f'<table class="rows">{_caption(caption)}{head}{"".join(body)}</table>'
