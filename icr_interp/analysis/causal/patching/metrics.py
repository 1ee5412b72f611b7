"""Patching metrics: callables from logits ``[batch pos vocab]`` to a scalar; the logit difference at the query."""

from dataclasses import dataclass, replace
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor

Metric = Callable[[Float[Tensor, "batch pos vocab"]], Tensor | float]  # any callable from logits to a value


def read_positions(metric: Metric, n_pos: int) -> Int[Tensor, " batch"] | None:
    """The one position per example a metric declares it reads, or None (it may read every position).

    A metric declares them with two methods: ``read_positions(n_pos)`` (a ``[batch]`` tensor) and
    ``on_rows(rows)``, its value from the logits at those positions only (``[batch vocab]``).  The engine then
    recomputes nothing after those positions and unembeds only those rows (:class:`LogitDiff` does this).
    """
    if not (callable(getattr(metric, "read_positions", None)) and callable(getattr(metric, "on_rows", None))):
        return None
    return metric.read_positions(n_pos)


@dataclass(frozen=True)
class LogitDiff:
    """Mean over the batch of ``logit[clean answer] - logit[corrupted answer]`` at the query.

    With ``clean_value`` and ``corrupted_value`` set (see :meth:`calibrated`) the
    metric is normalised: 0 = corrupted run, 1 = clean run.
    """

    clean_answers: Int[Tensor, " batch"]  # token the clean prompt should produce
    corrupted_answers: Int[Tensor, " batch"]  # token the corrupted prompt should produce
    query_pos: Int[Tensor, " batch"] | None = None  # where to read the logits (None: last position)
    clean_value: float | None = None  # raw metric on the clean run (normalisation)
    corrupted_value: float | None = None  # raw metric on the corrupted run (normalisation)

    def read_positions(self, n_pos: int) -> Int[Tensor, " batch"]:
        """The position read in each example (the query; the last position when ``query_pos`` is None)."""
        if self.query_pos is not None:
            return self.query_pos
        return torch.full_like(self.clean_answers, n_pos - 1)

    def per_example(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, " batch"]:
        """The raw logit difference of each example (its mean is :meth:`raw`)."""
        rows = torch.arange(logits.shape[0], device=logits.device)
        return self._row_diff(logits[rows, self.read_positions(logits.shape[1]).to(rows.device)])

    def _row_diff(self, last: Float[Tensor, "batch vocab"]) -> Float[Tensor, " batch"]:
        rows = torch.arange(last.shape[0], device=last.device)
        clean, corrupted = self.clean_answers.to(rows.device), self.corrupted_answers.to(rows.device)
        return last[rows, clean] - last[rows, corrupted]

    def raw(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        return self.per_example(logits).mean()

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        return self._normalised(self.raw(logits))

    def on_rows(self, rows: Float[Tensor, "batch vocab"]) -> Float[Tensor, ""]:
        """The metric from the logits at :meth:`read_positions` only (what the engine unembeds)."""
        return self._normalised(self._row_diff(rows).mean())

    def _normalised(self, value: Tensor) -> Tensor:
        if self.clean_value is None or self.corrupted_value is None:
            return value
        return (value - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def calibrated(self, clean_logits: Float[Tensor, "batch pos vocab"],
                   corrupted_logits: Float[Tensor, "batch pos vocab"]) -> "LogitDiff":
        """The normalised metric (0 = ``corrupted_logits``, 1 = ``clean_logits``)."""
        with torch.no_grad():
            clean, corrupted = float(self.raw(clean_logits)), float(self.raw(corrupted_logits))
        return replace(self, clean_value=clean, corrupted_value=corrupted)


def logit_diff_metric(clean_answers: Int[Tensor, " batch"], corrupted_answers: Int[Tensor, " batch"],
                      query_pos: Int[Tensor, " batch"] | None = None, *,
                      clean_logits: Float[Tensor, "batch pos vocab"] | None = None,
                      corrupted_logits: Float[Tensor, "batch pos vocab"] | None = None) -> LogitDiff:
    """Logit-difference metric at each example's query (normalised when both baseline logits are given).

    Args:
        clean_answers: target token of each clean prompt.
        corrupted_answers: target token of each corrupted prompt.
        query_pos: per-example position to read (default: the last position).
        clean_logits, corrupted_logits: baseline runs; with both, 0 = corrupted and 1 = clean.
    """
    metric = LogitDiff(clean_answers, corrupted_answers, query_pos)
    if clean_logits is not None and corrupted_logits is not None:
        metric = metric.calibrated(clean_logits, corrupted_logits)
    return metric
