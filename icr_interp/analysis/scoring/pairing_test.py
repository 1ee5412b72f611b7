"""A pairing test without a blind spot: is each answer balanced with *its own* subject, beyond chance?

The pairwise score ``1 - TV`` (:func:`icr_interp.analysis.scoring.pairwise_form.pairwise_tv`) measures how far a row is
from the pairwise family.  It is a *distance*, not a test of the pairing: whenever the larger masses of the
pairs sum to at most one half (``sum_i max(s_i, a_i) <= 1/2``, e.g. any row with pair mass ``M <= 1/2``) the
closed form reduces to ``TV = 1 - M``, which no re-pairing changes, so the true pairing and every re-pairing
score alike (docs/theory.md, "A pairing test without a blind spot").

This module tests the pairing on the row **renormalised over the pair tokens**, ``s~_i = s_i / M``,
``a~_i = a_i / M``.  With the within-pair L1 ``D(pi) = sum_i |s~_i - a~_pi(i)|`` of a pairing ``pi``:

* **effect** (per row) ``e = (mean over derangements delta of D(delta) - D(id)) / 2``: how much less of the
  renormalised row would have to move to make the true pairs balanced than the re-paired ones.  A uniformly
  drawn derangement sends each ``i`` to a uniform ``j != i``, so the mean has a closed form,
  ``mean_delta D(delta) = (C - D(id)) / (k - 1)`` with ``C = sum_ij |s~_i - a~_j|``; hence
  ``e = (C - k D(id)) / (2 (k - 1))``.  Balance ``2 sum_i min(s~_i, a~_i)`` is ``1 - D(id)``, so ``e`` is half
  the balance gain over re-pairing (times ``k / (k - 1)`` against the all-permutation mean).
* **effect in attention mass** ``M * e``: the same in units of the original row -- what the pairing moves
  of the head's actual attention.  A head with 0.1% of its mass on the pairs can be perfectly paired in the
  renormalised row and still move nothing; :data:`PAIRING_MIN_MASS` is the floor a head must clear.
* **p-value**: one-sided randomisation over rows.  If the pairing is independent of the masses, each row's
  true pairing is a uniform draw of the ``k!`` labelings, so every draw gives every row its own uniform
  pairing ``sigma_b`` and recomputes ``mean_b D(sigma_b)``; ``p = (1 + #{draw <= observed}) / (1 + draws)``
  (ties count against the pairing).  ``e(sigma)`` is ``C / (2(k-1))`` minus ``k / (2(k-1))`` times ``D(sigma)``,
  so ranking draws by ``mean D`` is ranking them by the effect.

Nothing here depends on ``M`` except through the renormalisation, so the expectation of the effect differs
between the true and re-paired pairings at any pair mass ``M > 0`` (rows with ``M = 0`` add 0 to every draw).

Example::

    result = pairing_test_rows(subject, answer)   # [batch, k] masses of rows on each pair's tokens
    result.effect, result.effect_mass, result.p_value, result.distance   # distance: TV to the pairwise family
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.bootstrap import bootstrap_mean_ci
from icr_interp.analysis.scoring.pairing_null import (NULL_ALPHA, NULL_DRAWS, NULL_SEED, TIE_TOL, draw_means, pairings,
                                                      uniform_picks)
from icr_interp.analysis.scoring.pairwise_form import pairwise_tv

# A head is "pairwise" only if its pairing moves at least this much of its attention (effect in attention mass,
# against derangements).  Why 0.05: the old rule's floor in the same units (mass that would have to move), and
# above what position alone gives: random-weight models reach 0.03 (docs/results.md, "Template scores against a
# null"); a pairing below 5% of a head's row changes less than 5% of what it writes.
PAIRING_MIN_MASS = 0.05


@dataclass(frozen=True)
class PairingTest:
    """The pairing test of rows (leading dims as the inputs' minus ``[batch, pair]``)."""

    effect: Float[Tensor, "*lead"]  # mean renormalised effect: true pairing vs derangements (half-L1 units)
    effect_mass: Float[Tensor, "*lead"]  # the same in attention mass (each row's effect times its pair mass)
    p_value: Float[Tensor, "*lead"]  # one-sided randomisation p that the true pairing is more balanced
    distance: Float[Tensor, "*lead"]  # mean TV to the nearest pairwise template (the family, not the pairing)
    pair_mass: Float[Tensor, "*lead"]  # mean pair mass M
    rows: Float[Tensor, "*lead batch"]  # per-row renormalised effect (for intervals)
    rows_mass: Float[Tensor, "*lead batch"]  # per-row effect in attention mass

    def ci(self, mass: bool = True, seed: int = NULL_SEED) -> tuple[Tensor, Tensor]:
        """95% bootstrap interval of the mean effect over rows (in attention mass, or renormalised)."""
        return bootstrap_mean_ci(self.rows_mass if mass else self.rows, seed=seed)

    def shown(self, alpha: float = NULL_ALPHA, min_mass: float = PAIRING_MIN_MASS) -> Tensor:
        """Where the pairing beats the re-pairing null at ``alpha`` with at least ``min_mass`` effect."""
        return (self.p_value <= alpha) & (self.effect_mass >= min_mass)

    def at(self, *idx) -> dict:
        """Plain-data view of one leading index (none for unbatched rows)."""
        return dict(effect=float(self.effect[idx]), effect_mass=float(self.effect_mass[idx]),
                    p_value=float(self.p_value[idx]), distance=float(self.distance[idx]),
                    pair_mass=float(self.pair_mass[idx]))


def check_masses(subject: Tensor, answer: Tensor) -> None:
    """The one input check of the pairing statistics: ``subject`` and ``answer`` both ``[..., batch, k]``."""
    if subject.shape != answer.shape or subject.ndim < 2:
        raise ValueError(f"subject and answer must both be [..., batch, k]; got {list(subject.shape)} and "
                         f"{list(answer.shape)}")


def renormalise(subject: Float[Tensor, "*lead pair"],
                answer: Float[Tensor, "*lead pair"]) -> tuple[Tensor, Tensor, Tensor]:
    """``(s / M, a / M, M)``; a row without pair mass becomes all zeros (it is balanced under every pairing)."""
    mass = (subject + answer).sum(-1, keepdim=True)
    scale = torch.where(mass > 0, 1 / mass.clamp_min(1e-30), torch.zeros_like(mass))
    return subject * scale, answer * scale, mass[..., 0]


def row_effects(subject: Float[Tensor, "*lead pair"], answer: Float[Tensor, "*lead pair"]) -> Tensor:
    """Per-row renormalised effect ``(C - k D(id)) / (2 (k - 1))`` (0 for k = 1: nothing to re-pair)."""
    s, a, _ = renormalise(subject.double(), answer.double())
    k = s.shape[-1]
    if k < 2:
        return torch.zeros(s.shape[:-1], dtype=torch.float64, device=s.device)
    total = (s[..., :, None] - a[..., None, :]).abs().sum((-1, -2))
    return (total - k * (s - a).abs().sum(-1)) / (2 * (k - 1))


def pairing_test_rows(subject: Float[Tensor, "*lead batch pair"], answer: Float[Tensor, "*lead batch pair"], *,
                      draws: int = NULL_DRAWS, seed: int = NULL_SEED) -> PairingTest:
    """Test whether rows balance each subject with its own answer more than with re-paired ones.

    Args:
        subject, answer: masses ``[*lead, batch, k]`` that rows put on each pair's subject and answer tokens
            (summed over each span); each row's masses sum to at most 1.  Leading dims (e.g. layer, head)
            are tested independently.
        draws: randomisation draws (p-value resolution ``1 / (1 + draws)``).
        seed: seeds the draws (and the permutation sample for k > 6): same rows, same p-value.

    Returns:
        :class:`PairingTest`: the effect (renormalised and in attention mass), its p-value, and the TV
        distance to the pairwise family kept apart from it.
    """
    check_masses(subject, answer)
    if subject.shape[-2] == 0:
        raise ValueError("pairing_test_rows needs at least one row")
    if not (torch.isfinite(subject).all() and torch.isfinite(answer).all()):
        raise ValueError("subject and answer masses must be finite")
    if (subject < -1e-6).any() or (answer < -1e-6).any():
        raise ValueError("subject and answer masses must be >= 0 (attention masses)")
    subject, answer = subject.clamp_min(0).double(), answer.clamp_min(0).double()
    s, a, mass = renormalise(subject, answer)
    rows = row_effects(subject, answer)
    observed_l1 = (s - a).abs().sum(-1)  # [*lead batch]
    p = _randomisation_p(s, a, observed_l1, draws, seed)
    return PairingTest(effect=rows.mean(-1).float(), effect_mass=(rows * mass).mean(-1).float(), p_value=p.float(),
                       distance=pairwise_tv(subject, answer).mean(-1).float(), pair_mass=mass.mean(-1).float(),
                       rows=rows.float(), rows_mass=(rows * mass).float())


def _randomisation_p(s: Tensor, a: Tensor, observed_l1: Tensor, draws: int, seed: int) -> Tensor:
    """``(1 + #{draw: mean_b D_b(sigma_b) <= mean_b D_b(id) + tol}) / (1 + draws)``, sigma_b uniform per row."""
    k = s.shape[-1]
    lead = s.shape[:-2]
    if k < 2:
        return torch.ones(lead, dtype=torch.float64, device=s.device)
    gen = torch.Generator().manual_seed(seed)
    perms = pairings(k, gen).to(s.device)  # all k! (k <= 6) or a uniform sample: each a uniform labeling
    table = (s[..., None, :] - a[..., perms]).abs().sum(-1)  # [*lead batch perm]: D_b(pi) for each pi
    observed = observed_l1.mean(-1)
    picks = uniform_picks(table.shape[-1], draws, table.shape[-2], gen)
    hits = (draw_means(table, picks) <= observed[..., None] + TIE_TOL).sum(-1).to(observed.dtype)
    return (1 + hits) / (1 + draws)
