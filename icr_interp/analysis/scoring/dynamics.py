"""Training dynamics: template scores and held-out accuracy along fine-tuning.

:class:`TemplateTracker` is a ``finetune`` callback.  Every ``every`` steps it
scores the query attention of a fixed held-out batch against the templates
(:mod:`icr_interp.analysis.scoring.templates`) and measures accuracy there, so a run records
*how* the pattern forms, not just where it ends.
"""

from dataclasses import dataclass, field

import torch
from icr_interp.tl.compat import TLModel

from icr_interp.task.batch import Batch
from icr_interp.analysis.scoring.templates import query_rows_from_cache, score_rows


@dataclass
class TemplateTracker:
    """Record template scores and accuracy on ``batch`` every ``every`` steps (and before step 0)."""

    batch: Batch  # fixed held-out prompts
    every: int = 10  # steps between measurements
    series: dict = field(default_factory=dict)  # step, accuracy and the headline template scores, as lists

    def measure(self, model: TLModel, step: int) -> None:
        """Score the attention and accuracy of ``model`` now (``step`` = steps taken), in one forward."""
        qpos = self.batch.layout.pred_pos
        with torch.no_grad():
            logits, cache = model.run_with_cache(self.batch.tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        accuracy = (logits[torch.arange(len(self.batch)), qpos].argmax(-1) == self.batch.answers).float().mean()
        scores = score_rows(query_rows_from_cache(cache, qpos, model.cfg.n_layers), self.batch.layout)
        for key, value in dict(step=step, accuracy=float(accuracy), **scores.headline()).items():
            self.series.setdefault(key, []).append(value)

    def __call__(self, step: int, model: TLModel, history) -> None:
        if step == 0 and not self.series:
            raise RuntimeError("call tracker.measure(model, 0) before fine-tuning to record the start")
        if (step + 1) % self.every == 0:
            self.measure(model, step + 1)

