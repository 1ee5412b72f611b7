"""Training dynamics: template scores and held-out accuracy along fine-tuning.

:class:`TemplateTracker` is a ``finetune`` callback.  Every ``every`` steps it
scores the query attention of a fixed held-out batch against the templates
(:mod:`icr_interp.templates`) and measures accuracy there, so a run records
*how* the pattern forms, not just where it ends.
"""

from dataclasses import dataclass, field

import torch
from transformer_lens import HookedTransformer

from icr_interp.task import Batch
from icr_interp.templates import query_rows, score_rows


@dataclass
class TemplateTracker:
    """Record template scores and accuracy on ``batch`` every ``every`` steps (and before step 0)."""

    batch: Batch  # fixed held-out prompts
    every: int = 10  # steps between measurements
    series: dict = field(default_factory=lambda: {k: [] for k in (
        "step", "accuracy", "pairwise", "balance", "pair_mass", "best",
        "mean_row_pairwise", "mean_row_balance", "mean_row_best")})

    def measure(self, model: HookedTransformer, step: int) -> None:
        """Score the attention and accuracy of ``model`` now (``step`` = steps taken)."""
        with torch.no_grad():
            rows = query_rows(model, self.batch)
            logits = model(self.batch.tokens)[torch.arange(len(self.batch)), self.batch.layout.query_pos]
        scores = score_rows(rows, self.batch.layout).to_dict()
        s = self.series
        s["step"].append(step)
        s["accuracy"].append(float((logits.argmax(-1) == self.batch.answers).float().mean()))
        for key in ("pairwise", "balance", "pair_mass", "best"):
            s[key].append(_scalar(scores[key]))
        for key in ("pairwise", "balance", "best"):
            s[f"mean_row_{key}"].append(_scalar(scores["mean_row"][key]))

    def __call__(self, step: int, model: HookedTransformer, history) -> None:
        if step == 0 and not self.series["step"]:
            raise RuntimeError("call tracker.measure(model, 0) before fine-tuning to record the start")
        if (step + 1) % self.every == 0:
            self.measure(model, step + 1)


def _scalar(value):
    return value.item() if hasattr(value, "item") else value
