"""Views: circuitsvis attention views that work offline, matplotlib figures, static HTML reports.

One job per module:

* :mod:`~icr_interp.viz.views` -- role labels (``s2:s13`` is the second
  context subject, token ``s13``), query-row attention by role slot, and
  circuitsvis views (:func:`attention_view`) that render themselves in a
  notebook from circuitsvis's bundled script, coloured so the query row is
  readable;
* :mod:`~icr_interp.viz.offline` -- self-contained HTML: the bundle inlined
  once, no network (:func:`offline_html`);
* :mod:`~icr_interp.viz.figures` -- matplotlib figures, returned and never
  shown (``plot_*``, :func:`figure_png`);
* :mod:`~icr_interp.viz.report` (with :mod:`~icr_interp.viz.tables`) -- an
  HTML report rendered from *precomputed* results; it runs no analysis.
  :mod:`~icr_interp.viz.legacy` keeps the first release's one-call
  :func:`save_report` / :func:`full_report`, which compute and then render.

Every analysis reads the last layer unless told otherwise
(:func:`icr_interp.analysis.attention.resolve_layer`).
"""

from icr_interp.viz import offline, views  # noqa: I001  (order: report imports these)
from icr_interp.viz import figures, tables
from icr_interp.viz import report
from icr_interp.viz import legacy
from icr_interp.viz.figures import (ROLE_COLORS, _figure, figure_png, plot_circuit_series, plot_patching,
                                    plot_query_attention, plot_role_patching, plot_training_curves, stack_pngs)
from icr_interp.viz.legacy import batch_info, full_report, save_report
from icr_interp.viz.offline import BUNDLE_PATH, bundle as _bundle, fragment as _fragment, offline_html
from icr_interp.viz.offline import script_safe as _script_safe
from icr_interp.viz.report import render_report, write_report
from icr_interp.viz.tables import patching_panels, scores_table
from icr_interp.viz.views import (VIEW_KINDS, AttentionView, attention_view, pattern_view, query_attention,
                                  role_labels, short_label, slot_labels, slot_roles)

__all__ = [
    "VIEW_KINDS", "ROLE_COLORS", "BUNDLE_PATH", "AttentionView", "attention_view", "pattern_view", "offline_html",
    "query_attention", "role_labels", "slot_labels", "slot_roles", "short_label", "plot_query_attention",
    "plot_patching", "plot_role_patching", "plot_training_curves", "plot_circuit_series", "figure_png", "stack_pngs",
    "patching_panels", "scores_table", "render_report", "write_report", "save_report", "full_report", "batch_info",
    "figures", "offline", "report", "tables", "views", "legacy",
]
