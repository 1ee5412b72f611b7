"""Circuit summaries along training: one :class:`~icr_interp.analysis.causal.circuit.CircuitSummary` per checkpoint
of a run, ordered by step, as a table (CSV) and JSON (``probes/patching.py`` on a directory of checkpoints)."""

import csv
import io
from dataclasses import dataclass

from icr_interp.analysis.causal.circuit import CircuitSummary


@dataclass
class CircuitSeries:
    """Circuit summaries of several checkpoints of one run, ordered by training step."""

    names: list[str]  # checkpoint names
    steps: list[int | None]  # training step of each (None: unknown)
    summaries: list[CircuitSummary]  # one per checkpoint

    def __post_init__(self):
        if not (len(self.names) == len(self.steps) == len(self.summaries)):
            raise ValueError("names, steps and summaries must have the same length")

    @property
    def components(self) -> list[str]:
        """Components present in every summary, in summary order."""
        if not self.summaries:
            return []
        common = set.intersection(*(set(s.components) for s in self.summaries))
        return [c for c in self.summaries[0].components if c in common]

    def x(self) -> list[float]:
        """The x axis: steps when every checkpoint has one, else checkpoint indices."""
        if all(s is not None for s in self.steps):
            return [float(s) for s in self.steps]
        return [float(i) for i in range(len(self.names))]

    def values(self, component: str, column: str) -> list[float]:
        return [s[component, column] for s in self.summaries]

    def to_dict(self, columns: tuple[str, ...] = ("relation", "lookup", "accuracy_drop")) -> dict:
        series = {f"{c}:{col}": self.values(c, col) for c in self.components for col in columns}
        return dict(names=list(self.names), steps=list(self.steps), components=self.components,
                    columns=list(columns), base_accuracy=[s.base_accuracy for s in self.summaries],
                    series=series, verdicts=[s.verdict for s in self.summaries],
                    summaries=[s.to_dict() for s in self.summaries])

    def to_csv(self, columns: tuple[str, ...] = ("relation", "lookup", "accuracy_drop")) -> str:
        """One row per checkpoint: name, step, base accuracy, then ``component:column`` values."""
        keys = [(c, col) for c in self.components for col in columns]
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["name", "step", "base_accuracy", *(f"{c}:{col}" for c, col in keys)])
        for name, step, s in zip(self.names, self.steps, self.summaries):
            writer.writerow([name, "" if step is None else step, f"{s.base_accuracy:.6g}",
                             *(f"{s[c, col]:.6g}" for c, col in keys)])
        return buf.getvalue()
