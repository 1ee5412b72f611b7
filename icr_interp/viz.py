"""Views: circuitsvis attention views that work offline, static HTML reports, figures.

Three kinds of output, all built from a model and a :class:`~icr_interp.task.Batch`
whose layout names every position's role:

* **circuitsvis views** (:func:`attention_view`) -- objects that render
  themselves in a notebook (``_repr_html_``).  circuitsvis's own objects check
  the network when rendering and, as strings, load the library from a CDN; ours
  always use the JavaScript bundle circuitsvis ships inside its package.
* **static HTML** (:func:`offline_html`, :func:`save_report`) -- one
  self-contained file: the bundle inlined once, figures as base64 PNGs, no
  network access needed to open it.
* **matplotlib figures** (``plot_*``) -- returned, never shown or saved; they
  use the Agg canvas directly, so importing this module leaves the caller's
  pyplot backend alone.

Token strings are labelled by role (:func:`role_labels`): ``s2:s13`` is the
second context subject, token ``s13``; ``a2:a40`` its answer; ``query:s3`` the
query subject.  Query-row attention is read per example at that example's
layout positions (:func:`query_attention`), so examples with different layouts
line up by role, not by position.

Figures are built on the Agg canvas without pyplot, so importing this module
never changes a notebook's backend; in Jupyter run ``%matplotlib inline`` (or
``display(fig)``) to show a returned ``Figure``.
"""

import base64
import html
import io
import json
import math
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path

import circuitsvis
import circuitsvis.attention
import circuitsvis.tokens
import numpy as np
import torch
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Float
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from torch import Tensor
from transformer_lens import HookedTransformer

from icr_interp.task import Batch, ICRecallTask
from icr_interp.vocab import Vocabulary

VIEW_KINDS = ("heads", "patterns", "query")  # attention_heads | attention_patterns | query-row tokens
ROLE_COLORS = {"s": "#4477aa", "a": "#ee6677", "query": "#228833", "<bos>": "#999999", "other": "#bbbbbb"}
BUNDLE_PATH = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"  # shipped with circuitsvis

_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=\S*\s*$", re.MULTILINE)
_SELF_CLOSED_DIV = re.compile(r'<div(\s+id="circuits-vis-[^"]*"[^>]*?)\s*/>')
_CDN_CALL = re.compile(r'import\s*\{\s*render\s*,\s*(\w+)\s*\}\s*from\s*"https?://[^"]*";\s*'
                       r'render\(\s*("[^"]*")\s*,\s*\1\s*,')
_REMOTE_SCRIPT = re.compile(  # a script fetched from elsewhere: <script src="//...">, import ... from "https://..."
    r"""(?:\bsrc\s*=\s*["']?|\bimport\b[^;]*?\bfrom\s*["']|\bimport\s*\(\s*["'])(?:https?:)?//""", re.IGNORECASE)


# ----------------------------------------------------------------- labels
def _vocab(task_or_vocab: ICRecallTask | Vocabulary | None) -> Vocabulary | None:
    return task_or_vocab.vocab if isinstance(task_or_vocab, ICRecallTask) else task_or_vocab


def role_labels(task_or_vocab: ICRecallTask | Vocabulary | None, batch: Batch, i: int) -> list[str]:
    """Token strings of example ``i``, prefixed by their role from the batch's layout.

    Args:
        task_or_vocab: gives the token strings; ``None`` shows token ids.
        batch: the prompts and their layout.
        i: example index.

    Returns:
        One string per position: ``"<bos>"``, ``"s1:s12"``, ``"a1:a40"``, ...,
        ``"query:s3"``; positions without a role keep their bare token string.
    """
    vocab = _vocab(task_or_vocab)
    tokens = batch.tokens[i].cpu()
    labels = vocab.to_str(tokens) if vocab is not None else [str(int(t)) for t in tokens]
    names = list(labels)
    lay = batch.layout
    for prefix, slots in (("s", lay.subject_pos[i]), ("a", lay.answer_pos[i])):
        for j, p in enumerate(slots.tolist()):
            if p >= 0:
                labels[p] = f"{prefix}{j + 1}:{names[p]}"
    labels[int(lay.query_pos[i])] = f"query:{names[int(lay.query_pos[i])]}"
    return labels


def slot_labels(batch: Batch) -> list[str]:
    """Role names of the slots :func:`query_attention` returns: ``<bos>, s1, a1, ..., query``."""
    n_pairs = batch.layout.subject_pos.shape[1]
    bos = ["<bos>"] if bool((batch.layout.bos_pos >= 0).all()) else []
    return bos + [f"{r}{j + 1}" for j in range(n_pairs) for r in ("s", "a")] + ["query"]


def _slot_positions(batch: Batch) -> Tensor:
    """Per-example position of every slot in :func:`slot_labels` order, [batch slot]."""
    lay = batch.layout
    pairs = torch.stack([lay.subject_pos, lay.answer_pos], dim=-1).flatten(1)  # s1 a1 s2 a2 ...
    parts = [lay.bos_pos[:, None]] if bool((lay.bos_pos >= 0).all()) else []
    return torch.cat([*parts, pairs, lay.query_pos[:, None]], dim=1)


# --------------------------------------------------------------- patterns
def _patterns(model: HookedTransformer, tokens: Tensor, layers: list[int]) -> dict[int, Tensor]:
    """Attention patterns [batch head query key] of the given layers, on CPU."""
    names = {f"blocks.{layer}.attn.hook_pattern": layer for layer in layers}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names)
    return {layer: cache[name].detach().float().cpu() for name, layer in names.items()}


def _check_layer(model: HookedTransformer, layer: int) -> None:
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"layer must lie in [0, {model.cfg.n_layers}), got {layer}")


def _query_rows(pattern: Tensor, batch: Batch) -> Float[Tensor, "batch head slot"]:
    """Each example's query row, gathered at its own slot positions."""
    lay = batch.layout.to("cpu")
    rows = pattern[torch.arange(len(batch)), :, lay.query_pos]  # [batch head key]
    slots = _slot_positions(batch.to("cpu"))
    return torch.gather(rows, 2, slots[:, None, :].expand(-1, rows.shape[1], -1))


def query_attention(model: HookedTransformer, batch: Batch, layer: int = 0) -> tuple[Float[Tensor, "batch head slot"],
                                                                                        list[str]]:
    """Attention from each example's query to every role slot (per-example layout).

    Returns:
        ``(rows, labels)``: rows ``[batch head slot]`` on CPU, and the slot
        labels (:func:`slot_labels`).  The mean row is ``rows.mean(0)``.
    """
    _check_layer(model, layer)
    return _query_rows(_patterns(model, batch.tokens, [layer])[layer], batch), slot_labels(batch)


# ----------------------------------------------------------- circuitsvis
class AttentionView(RenderedHTML):
    """A circuitsvis view that always renders from the bundled script.

    circuitsvis's ``RenderedHTML`` pings google.com on every ``_repr_html_`` and
    loads its script from unpkg when online (and always for ``str()``).  This
    subclass renders its self-contained source in every case.
    """

    def _repr_html_(self) -> str:
        return self.local_src

    def show_code(self) -> str:
        return self.local_src

    def __str__(self) -> str:
        return self.local_src

    def to_html(self, title: str = "circuitsvis view") -> str:
        """A complete self-contained HTML document (see :func:`offline_html`)."""
        return offline_html(self, title=title)


def attention_view(model: HookedTransformer, batch: Batch, example: int = 0, layer: int = 0, kind: str = "heads", *,
                   vocab: ICRecallTask | Vocabulary | None = None) -> AttentionView:
    """circuitsvis attention view of one example and layer, tokens labelled by role.

    Args:
        model: any HookedTransformer.
        batch: prompts with their layout.
        example: which example of the batch.
        layer: which layer's ``blocks.{layer}.attn.hook_pattern``.
        kind: ``"heads"`` (``circuitsvis.attention.attention_heads``: every
            head's pattern, one zoomed with labelled axes), ``"patterns"``
            (``attention_patterns``) or ``"query"``
            (``circuitsvis.tokens.colored_tokens_multi``: the prompt coloured by
            the query row, one colouring per head).
        vocab: a task or vocabulary for token strings (``None``: token ids).

    Returns:
        An :class:`AttentionView` (a circuitsvis ``RenderedHTML``) that renders
        itself in notebooks without network access.
    """
    if kind not in VIEW_KINDS:
        raise ValueError(f"kind must be one of {VIEW_KINDS}, got {kind!r}")
    if not 0 <= example < len(batch):
        raise IndexError(f"example {example} out of range for a batch of {len(batch)}")
    _check_layer(model, layer)
    pattern = _patterns(model, batch.tokens[example : example + 1], [layer])[layer][0]  # [head query key]
    return _view(pattern, role_labels(vocab, batch, example), layer, kind, int(batch.layout.query_pos[example]))


def _view(pattern: Tensor, labels: list[str], layer: int, kind: str, query_pos: int) -> AttentionView:
    """Render ``pattern`` [head query key] of one example as a circuitsvis view."""
    names = [f"L{layer}H{h}" for h in range(pattern.shape[0])]
    # AttentionHeads draws tokens on a canvas (plain text); the other two views
    # insert them as HTML, so there they must be escaped ("<bos>" is not a tag).
    escaped = [html.escape(s) for s in labels]
    if kind == "heads":
        rendered = circuitsvis.attention.attention_heads(attention=pattern, tokens=labels, attention_head_names=names,
                                                         mask_upper_tri=True)
    elif kind == "patterns":
        rendered = circuitsvis.attention.attention_patterns(tokens=escaped, attention=pattern)
    else:
        rendered = circuitsvis.tokens.colored_tokens_multi(escaped, pattern[:, query_pos, :].T.contiguous(), names)
    return AttentionView(rendered.local_src, rendered.cdn_src)


# ------------------------------------------------------------ offline html
@lru_cache(maxsize=1)
def _bundle() -> str:
    """circuitsvis's browser bundle (defines the global ``CircuitsVis``)."""
    if not BUNDLE_PATH.is_file():
        raise FileNotFoundError(f"circuitsvis bundle not found at {BUNDLE_PATH}; reinstall circuitsvis")
    return BUNDLE_PATH.read_text(encoding="utf-8")


def _script_safe(js: str) -> str:
    """JavaScript that can sit inside ``<script>``: no end tag, no comment opener, no source map."""
    js = _SOURCE_MAP.sub("", js)
    # Both only occur inside string or regex literals, where "\/" == "/" and "\!" == "!".
    return re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE).replace("<!--", "<\\!--")


def _fragment(view: RenderedHTML | str) -> str:
    """The view's markup with its render call only, expecting the bundle in the page."""
    src = view.local_src if isinstance(view, RenderedHTML) else str(view)
    src = src.replace(_bundle().replace("</script>", ""), "")  # render_local's inlined copy
    src = _CDN_CALL.sub(r"CircuitsVis.render(\2, CircuitsVis.\1,", src)  # a CDN string -> the bundle's global
    src = _SELF_CLOSED_DIV.sub(r"<div\1></div>", src)  # "<div/>" is not self-closing in HTML
    src = _SOURCE_MAP.sub("", src)
    if _REMOTE_SCRIPT.search(src):
        raise ValueError("view loads a script from the network and cannot be made self-contained")
    return src


def _document(title: str, body: str, with_bundle: bool) -> str:
    bundle = f"<script>{_script_safe(_bundle())}</script>" if with_bundle else ""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{_CSS}</style>\n{bundle}\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def offline_html(view: RenderedHTML | str | list, title: str = "circuitsvis view") -> str:
    """A self-contained HTML document showing circuitsvis view(s) with no network access.

    The bundle circuitsvis ships (``dist/cdn/iife.js``) is inlined once, as a
    classic script defining the global ``CircuitsVis``; each view keeps only its
    container and its ``CircuitsVis.render(...)`` call.

    Args:
        view: a circuitsvis ``RenderedHTML`` (ours or circuitsvis's), its CDN
            string, or a list of them.
        title: the document title.
    """
    views = view if isinstance(view, list) else [view]
    body = "\n".join(f'<section class="view">{_fragment(v)}</section>' for v in views)
    return _document(title, f"<h1>{html.escape(title)}</h1>\n{body}", with_bundle=True)


# ----------------------------------------------------------------- figures
def _numpy(x) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _figure(width: float, height: float, **subplots) -> tuple[Figure, np.ndarray]:
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
        labels: one label per slot (:func:`slot_labels` or :func:`role_labels`).
        title: axes title.
    """
    data = _numpy(rows)
    if data.ndim not in (1, 2) or data.shape[-1] != len(labels):
        raise ValueError(f"rows must be [slot] or [examples slot] with {len(labels)} slots, got shape {data.shape}")
    fig, axes = _figure(max(4.0, 0.45 * len(labels) + 1.5), 3.0 if data.ndim == 1 else 1.2 + 0.22 * len(data))
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
    fig, axes = _figure(min(14.0, 2.5 + 0.55 * n_cols), min(12.0, 1.5 + 0.4 * n_rows))
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
    ax.set_title(title)
    return fig


def plot_training_curves(history, keys: list[str] | None = None, step_key: str = "step") -> Figure:
    """Training curves, one panel per key, over steps.

    Args:
        history: a dict of equal-length lists (or an object with ``to_dict()``,
            e.g. :class:`icr_interp.train.History`).
        keys: which series (default: every numeric list but ``step_key``).
        step_key: the x axis (default ``"step"``; indices if absent).
    """
    hist = history.to_dict() if hasattr(history, "to_dict") else dict(history)
    if keys is None:
        keys = [k for k, v in hist.items() if k != step_key and _is_series(v)]
    missing = [k for k in keys if k not in hist]
    if missing or not keys:
        raise KeyError(f"history has no series {missing or 'to plot'}; it has {sorted(hist)}")
    fig, axes = _figure(6.0, 1.2 + 1.6 * len(keys), nrows=len(keys), sharex=True)
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


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _img(fig: Figure, alt: str) -> str:
    data = base64.b64encode(figure_png(fig)).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


# ------------------------------------------------------------------ tables
def _plain(value):
    """JSON-like Python values: tensors and arrays become lists, results become dicts."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _cell(v) -> str:
    if isinstance(v, bool) or v is None:
        return html.escape(str(v))
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return html.escape(v)
    return _value_html(v)


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _value_html(v) -> str:
    """A table for a dict, a list of dicts, a vector or a matrix; escaped text otherwise."""
    if _scalar(v):
        return _cell(v)
    if isinstance(v, dict):
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_value_html(x)}</td></tr>" for k, x in v.items())
        return f'<table class="kv">{rows}</table>'
    if isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
        cols = list(dict.fromkeys(k for x in v for k in x))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{_cell(x.get(c, ''))}</td>" for c in cols) + "</tr>" for x in v)
        return f'<table class="grid"><tr>{head}</tr>{body}</table>'
    if isinstance(v, list) and all(_scalar(x) for x in v):
        return '<table class="grid"><tr>' + "".join(f"<td>{_cell(x)}</td>" for x in v) + "</tr></table>"
    if isinstance(v, list) and all(isinstance(r, list) and all(_scalar(x) for x in r) for r in v):
        body = "".join("<tr>" + "".join(f"<td>{_cell(x)}</td>" for x in r) + "</tr>" for r in v)
        return f'<table class="grid">{body}</table>'
    return f"<pre>{html.escape(json.dumps(v, indent=1, default=str))}</pre>"


def _matrix_table(matrix: np.ndarray, row_labels: list[str], col_labels: list[str]) -> str:
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(c)}</th>" for c in col_labels) + "</tr>"
    body = "".join(f"<tr><th>{html.escape(r)}</th>" + "".join(f"<td>{x:.3f}</td>" for x in row) + "</tr>"
                   for r, row in zip(row_labels, matrix))
    return f'<table class="grid">{head}{body}</table>'


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
    d = _plain(patching)
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


# ------------------------------------------------------------------ report
def save_report(path: str | os.PathLike, model: HookedTransformer, batch: Batch, *, scores=None, patching=None,
                vocab: ICRecallTask | Vocabulary | None = None, example: int = 0, layers: list[int] | None = None,
                max_examples: int = 32, title: str = "IC-recall attention report") -> Path:
    """Write one self-contained HTML report (no network needed to view it).

    Contents: the circuitsvis attention view of ``example`` for each layer
    (bundle inlined), the query-row attention per layer and head (mean row as a
    table and a bar chart, per-example heatmap), a table of template scores and
    patching heatmaps, all figures as base64 PNGs.

    Args:
        path: the HTML file; written atomically (temporary file + ``os.replace``).
        model: any HookedTransformer.
        batch: prompts with their layout.
        scores: template scores (a dict, or an object with ``to_dict()``).
        patching: patching results (a dict or object with ``to_dict()``; see
            :func:`patching_panels`).
        vocab: a task or vocabulary for token strings (``None``: token ids).
        example: the example shown in the attention view.
        layers: layers to show (default: all).
        max_examples: rows in the per-example query-attention heatmap.
        title: page title.

    Returns:
        The path written.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"report path is a directory: {path}")
    if not 0 <= example < len(batch):
        raise IndexError(f"example {example} out of range for a batch of {len(batch)}")
    layers = list(range(model.cfg.n_layers)) if layers is None else list(layers)
    for layer in layers:
        _check_layer(model, layer)
    patterns = _patterns(model, batch.tokens, layers)
    sections = [_summary_html(model, batch, vocab, example),
                _attention_html(patterns, batch, vocab, example),
                _query_html(patterns, batch, max_examples)]
    if scores is not None:
        sections.append(f'<h2>Template scores</h2>\n<div class="scores">{_value_html(_plain(scores))}</div>')
    if patching is not None:
        sections.append(_patching_html(patching))
    page = _document(title, f"<h1>{html.escape(title)}</h1>\n" + "\n".join(sections), with_bundle=True)
    _atomic_write(path, page)
    return path


def full_report(path: str | os.PathLike, model: HookedTransformer, task: ICRecallTask, batch: Batch, *,
                corruptions: tuple[str, ...] = ("relation", "query"), seed: int = 0, **options) -> Path:
    """Compute template scores and role patching for ``batch``, then :func:`save_report` them.

    Scores come from :func:`icr_interp.templates.score_templates`; for every
    corruption kind, :func:`icr_interp.patching.patch_by_role` (hook x role)
    and :func:`~icr_interp.patching.patch_pattern_by_role` (query-row pattern x
    source role) on ``task.corrupt(batch, kind, seed)``.

    Args:
        path, model, batch: as for :func:`save_report`.
        task: the task (token strings and corruptions).
        corruptions: corruption kinds to patch with (``()`` for none).
        seed: seeds the corruptions.
        **options: passed to :func:`save_report` (``example``, ``layers``, ``title``...).
    """
    from icr_interp import patching, templates  # analyses sit upstream of views; import only when used

    scores = templates.score_templates(model, batch).to_dict()
    results = {}
    for kind in corruptions:
        corrupted = task.corrupt(batch, kind, seed=seed)
        results[f"{kind} swap: hook x role"] = patching.patch_by_role(model, batch, corrupted).to_dict()
        results[f"{kind} swap: query-row pattern x source role"] = patching.patch_pattern_by_role(
            model, batch, corrupted).to_dict()
    return save_report(path, model, batch, vocab=task, scores=scores, patching=results or None, **options)


def _summary_html(model: HookedTransformer, batch: Batch, vocab, example: int) -> str:
    cfg = model.cfg
    info = {"layers": cfg.n_layers, "heads": cfg.n_heads, "d_model": cfg.d_model, "prompts": len(batch),
            "context pairs": batch.layout.subject_pos.shape[1]}
    icr = getattr(model, "icr_config", None)
    if icr is not None:
        info["memory"] = icr.construction or icr.memory
    voc = _vocab(vocab)
    target = voc.to_str(batch.answers[example].cpu()) if voc is not None else str(int(batch.answers[example]))
    prompt = " ".join(role_labels(vocab, batch, example))
    info[f"example {example}"] = f"{prompt} \u2192 {target}"
    return "<h2>Model and batch</h2>\n" + _value_html(info)


def _attention_html(patterns: dict[int, Tensor], batch: Batch, vocab, example: int) -> str:
    labels = role_labels(vocab, batch, example)
    query_pos = int(batch.layout.query_pos[example])
    parts = [f"<h2>Attention (example {example})</h2>",
             "<p>Per layer: every head's pattern (click a head to zoom), then the prompt coloured by the "
             "query's attention (hover a head name to switch).</p>"]
    for layer, pattern in patterns.items():
        views = "".join(f'<div class="view">{_fragment(_view(pattern[example], labels, layer, kind, query_pos))}</div>'
                        for kind in ("heads", "query"))
        parts.append(f'<h3>Layer {layer}</h3>\n<section id="attention-L{layer}">{views}</section>')
    return "\n".join(parts)


def _query_html(patterns: dict[int, Tensor], batch: Batch, max_examples: int) -> str:
    labels = slot_labels(batch)
    parts = ["<h2>Query attention row</h2>",
             "<p>Attention from each example's query to its own role slots (per-example layout), "
             f"averaged over {len(batch)} prompts.</p>"]
    for layer, pattern in patterns.items():
        rows = _query_rows(pattern, batch)  # [batch head slot]
        mean = rows.mean(0).numpy()  # [head slot]
        names = [f"L{layer}H{h}" for h in range(rows.shape[1])]
        parts.append(f"<h3>Layer {layer}: mean row</h3>\n" + _matrix_table(mean, names, labels))
        for h, name in enumerate(names):
            bars = plot_query_attention(mean[h], labels, title=f"{name} mean query row")
            heat = plot_query_attention(rows[:max_examples, h], labels, title=f"{name} query rows")
            parts.append(f'<div class="figs">{_img(bars, f"{name} mean query row")}'
                         f'{_img(heat, f"{name} query rows")}</div>')
    return "\n".join(parts)


def _patching_html(patching) -> str:
    panels, rest = patching_panels(patching)
    parts = ["<h2>Activation patching</h2>"]
    for title, matrix, rows, cols in panels:
        parts.append(f'<div class="figs">{_img(plot_patching(matrix, rows, cols, title), title)}</div>')
    if rest:
        parts.append(_value_html(rest))
    return "\n".join(parts)


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file in the same directory, then ``os.replace`` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a report is readable like any file
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 6px 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; vertical-align: top; }
table.kv > tbody > tr > th, table.kv > tr > th { text-align: left; background: #f4f4f4; }
.figs img { margin: 4px 8px 4px 0; max-width: 100%; }
pre { font-size: 0.8em; background: #f8f8f8; padding: 6px; }
"""
