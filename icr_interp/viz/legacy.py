"""The old name of :mod:`icr_interp.viz.model_report` (``experiments.checkpoint_analysis`` still imports it)."""

from icr_interp.viz.model_report import VIEW_INTRO, batch_info, full_report, save_report  # noqa: F401
