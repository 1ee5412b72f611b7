"""Views: circuitsvis attention views that work offline, matplotlib figures, static HTML reports.

One job per module:

* :mod:`~icr_interp.viz.labels` -- role labels (``s2:s13`` is the second
  context subject, token ``s13``), the one place positions get display names;
* :mod:`~icr_interp.viz.views` -- query-row attention by role slot, and
  circuitsvis views (:func:`attention_view`) that render themselves in a
  notebook from circuitsvis's bundled script, coloured so the query row is
  readable;
* :mod:`~icr_interp.viz.escape` -- one escaping function per output context
  (HTML text, attribute, JSON inside ``<script>``);
* :mod:`~icr_interp.viz.offline` -- self-contained HTML: the bundle inlined
  once, no network (:func:`offline_html`);
* :mod:`~icr_interp.viz.figures` -- matplotlib figures, returned and never
  shown (``plot_*``, :func:`figure_png`);
* :mod:`~icr_interp.viz.report` (with :mod:`~icr_interp.viz.tables`) -- an
  HTML report rendered from *precomputed* results; it runs no analysis.
  :mod:`~icr_interp.viz.model_report` computes what a model's report needs on
  a batch, then renders it (:func:`save_report`, :func:`full_report`);
* :mod:`~icr_interp.viz.query_table` -- the text table of a query attention
  row by role, before and after fine-tuning (``icr-interp reproduce``).

Submodules load on first use (PEP 562): ``icr_interp.viz.labels`` does not pull in circuitsvis or
matplotlib.  Every analysis reads the last layer unless told otherwise
(:func:`icr_interp.analysis.scoring.attention.resolve_layer`).
"""

import importlib

# public name -> the submodule that defines it
_EXPORTS = {
    "ROLE_COLORS": "figures", "new_figure": "figures", "figure_png": "figures", "plot_circuit_series": "figures",
    "plot_patching": "figures", "plot_query_attention": "figures", "plot_role_patching": "figures",
    "plot_training_curves": "figures", "stack_pngs": "figures",
    "batch_info": "model_report", "full_report": "model_report", "save_report": "model_report",
    "BUNDLE_PATH": "offline", "offline_html": "offline",
    "render_report": "report", "write_report": "report",
    "patching_panels": "tables", "scores_table": "tables",
    "VIEW_KINDS": "views", "AttentionView": "views", "attention_view": "views", "pattern_view": "views",
    "query_attention": "views",
    "role_labels": "labels", "short_label": "labels", "slot_labels": "labels", "slot_roles": "labels",
    "position_labels": "labels",
    "attention_report": "query_table",
}
_SUBMODULES = ("escape", "figures", "labels", "model_report", "offline", "query_table", "report", "tables", "views",
               "legacy")

__all__ = [*_EXPORTS, *(m for m in _SUBMODULES if m != "legacy")]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
