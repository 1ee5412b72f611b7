"""When a row set is called pairwise: the re-pairing test, the adjacency control and a floor in attention mass.

One rule for :func:`~icr_interp.analysis.scoring.templates.score_templates`, the composed score and the verdicts:

1. the true pairing beats the re-pairing null (:mod:`icr_interp.analysis.scoring.pairing_test`) at ``alpha``;
2. the true pairs beat the adjacency-matched pseudo-pairs (:mod:`icr_interp.analysis.scoring.adjacency_control`)
   at ``alpha`` -- a smooth positional profile does not pass;
3. the effect in attention mass is at least :data:`~icr_interp.analysis.scoring.pairing_test.PAIRING_MIN_MASS` --
   a perfect pairing of 0.1% of a head's attention is not the paper's pattern.

The position-matched control (:mod:`icr_interp.analysis.scoring.position_control`: own prompt's pairs against the same
pair index of other prompts) is reported beside them, not required: in a fixed layout a pairing whose weights
are set by position (the fine-tuned reference model always suppresses the same pair: own vs other prompts
-0.003) cannot be told from a positional profile, and requiring it would call the paper's own toy "not
pairwise".  What it costs: on 54 random-weight toy models (576 heads) the three conditions let one head
through (k = 3, effect 0.096 in attention mass), a head the position control rejects.
"""

from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.bootstrap import bootstrap_mean_ci
from icr_interp.analysis.scoring.adjacency_control import AdjacencyControl, adjacency_control
from icr_interp.analysis.scoring.pairing_null import NULL_ALPHA, NULL_DRAWS, NULL_SEED
from icr_interp.analysis.scoring.pairing_test import PAIRING_MIN_MASS, PairingTest, pairing_test_rows
from icr_interp.analysis.scoring.position_control import PositionControl, position_control


@dataclass(frozen=True)
class PairingEvidence:
    """The pairing test and the adjacency control of the same rows, and the rule's outcome."""

    test: PairingTest
    control: AdjacencyControl
    position: PositionControl
    alpha: float = NULL_ALPHA
    min_mass: float = PAIRING_MIN_MASS

    @property
    def shown(self) -> Tensor:
        """Where all three conditions hold (``[*lead]`` booleans)."""
        return ((self.test.p_value <= self.alpha) & (self.control.p_value <= self.alpha)
                & (self.test.effect_mass >= self.min_mass))

    def at(self, *idx) -> dict:
        """Plain data of one leading index, with 95% bootstrap intervals of the effects in attention mass."""
        lo, hi = bootstrap_mean_ci(self.test.rows_mass[idx])  # this index only: [layer head boot batch] is large
        clo, chi = bootstrap_mean_ci(self.control.rows_mass[idx])
        return dict(**self.test.at(*idx), effect_mass_ci=[float(lo), float(hi)],
                    adjacency=self.control.at(*idx), adjacency_margin_mass_ci=[float(clo), float(chi)],
                    position=self.position.at(*idx),
                    shown=bool(self.shown[idx]), rule=rule_text(self.alpha, self.min_mass))


def pairing_evidence(subject: Float[Tensor, "*lead batch pair"], answer: Float[Tensor, "*lead batch pair"], *,
                     alpha: float = NULL_ALPHA, min_mass: float = PAIRING_MIN_MASS,
                     seed: int = NULL_SEED, draws: int = NULL_DRAWS) -> PairingEvidence:
    """Run both tests on the same rows (masses in prompt order: pair i is the i-th pair of the prompt)."""
    return PairingEvidence(pairing_test_rows(subject, answer, seed=seed, draws=draws),
                           adjacency_control(subject, answer, seed=seed, draws=draws),
                           position_control(subject, answer, seed=seed, draws=draws), alpha, min_mass)


def rule_text(alpha: float = NULL_ALPHA, min_mass: float = PAIRING_MIN_MASS) -> str:
    return (f"pairwise = beats the re-pairing null and the adjacency control (each p <= {alpha:g}) with effect "
            f">= {min_mass:g} in attention mass")
