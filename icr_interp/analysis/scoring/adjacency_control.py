"""The adjacency-matched control of the pairing test: are the true pairs more balanced than neighbours?

In a prompt ``s_1 a_1 s_2 a_2 ... s_k a_k`` a pair's subject and answer are near each other.  A head whose
attention varies smoothly with position gives neighbours similar mass, so it balances the true pairs better
than re-paired ones -- and "beats" the re-pairing null of :mod:`icr_interp.analysis.scoring.pairing_test` -- without
caring about the pairing.  The control asks the same question of *pseudo-pairs* at the same token distance,
``(a_i, s_{i+1})`` for ``i < k``: the answer of one pair and the subject of the next.

Statistic, per row, on the row renormalised over the pair tokens (``s~ = s / M``, ``a~ = a / M``): the mean
within-pair L1 of the pseudo-pairs minus that of the true pairs, scaled to k pairs and halved (the units of
the pairing test's effect, mass that would have to move):

    margin = (k / 2) * (mean_{i<k} |a~_i - s~_{i+1}| - mean_i |s~_i - a~_i|)

``> 0``: the true pairs are more balanced than equally close neighbours.  A smooth positional profile gives
``margin ~ 0``; the paper's pattern with weights that vary across pairs gives ``margin > 0``.  The p-value
is a one-sided sign-flip test of the per-row margins (exact when the margins are symmetric about 0 under
"no better than the neighbours"); the margin in attention mass is ``M * margin``.  With ``k = 1`` there is
no pseudo-pair: margin 0, p = 1.  A head with most of its mass on subjects only (pseudo-pairs anti-balanced)
can beat the control without any pairing, so the control is used *beside* the re-pairing null, never alone.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.bootstrap import bootstrap_mean_ci
from icr_interp.analysis.scoring.pairing_null import NULL_DRAWS, NULL_SEED
from icr_interp.analysis.scoring.pairing_test import check_masses, renormalise
from icr_interp.task.layout import Layout

_CHUNK = 1 << 22
_TIE_TOL = 1e-9


@dataclass(frozen=True)
class AdjacencyControl:
    """The true pairs against adjacency-matched pseudo-pairs (leading dims as the inputs' minus [batch, pair])."""

    margin: Float[Tensor, "*lead"]  # mean renormalised margin of the true pairs over the pseudo-pairs
    margin_mass: Float[Tensor, "*lead"]  # the same in attention mass
    p_value: Float[Tensor, "*lead"]  # one-sided sign-flip p that the true pairs are the more balanced
    rows: Float[Tensor, "*lead batch"]  # per-row renormalised margin
    rows_mass: Float[Tensor, "*lead batch"]  # per-row margin in attention mass

    def ci(self, mass: bool = True, seed: int = NULL_SEED) -> tuple[Tensor, Tensor]:
        """95% bootstrap interval of the mean margin over rows."""
        return bootstrap_mean_ci(self.rows_mass if mass else self.rows, seed=seed)

    def at(self, *idx) -> dict:
        return dict(margin=float(self.margin[idx]), margin_mass=float(self.margin_mass[idx]),
                    p_value=float(self.p_value[idx]))


def adjacency_control(subject: Float[Tensor, "*lead batch pair"], answer: Float[Tensor, "*lead batch pair"], *,
                      draws: int = NULL_DRAWS, seed: int = NULL_SEED) -> AdjacencyControl:
    """Compare the true pairs ``(s_i, a_i)`` with the pseudo-pairs ``(a_i, s_{i+1})`` (masses in prompt order)."""
    check_masses(subject, answer)
    s, a, mass = renormalise(subject.clamp_min(0).double(), answer.clamp_min(0).double())
    k = s.shape[-1]
    if k < 2:
        zero = torch.zeros(s.shape[:-1], dtype=torch.float64, device=s.device)
        one = torch.ones(s.shape[:-2], device=s.device)
        return AdjacencyControl(zero.mean(-1).float(), zero.mean(-1).float(), one, zero.float(), zero.float())
    true_l1 = (s - a).abs().mean(-1)
    pseudo_l1 = (a[..., :-1] - s[..., 1:]).abs().mean(-1)
    rows = k / 2 * (pseudo_l1 - true_l1)  # [*lead batch]
    p = sign_flip_p(rows, draws, seed)
    return AdjacencyControl(rows.mean(-1).float(), (rows * mass).mean(-1).float(), p.float(), rows.float(),
                            (rows * mass).float())


def sign_flip_p(rows: Float[Tensor, "*lead batch"], draws: int = NULL_DRAWS, seed: int = NULL_SEED) -> Tensor:
    """One-sided sign-flip randomisation p that the mean of ``rows`` is above 0 (ties count against)."""
    gen = torch.Generator().manual_seed(seed)
    n = rows.shape[-1]
    signs = (torch.randint(2, (draws, n), generator=gen) * 2 - 1).to(rows)
    observed = rows.mean(-1)
    hits = torch.zeros_like(observed)
    step = max(1, _CHUNK // max(1, rows.numel()))
    for chunk in signs.split(step):
        drawn = (rows[..., None, :] * chunk).mean(-1)  # [*lead draw]
        hits += (drawn >= observed[..., None] - _TIE_TOL).sum(-1)
    return (1 + hits) / (1 + draws)


def pseudo_pair_distances(layout: Layout) -> dict:
    """Mean token distance (last token to last token) of the true pairs and of the pseudo-pairs.

    The control is matched when the two are close (one token each in the toy prompts; in text prompts
    ``s: a`` and ``a`` + newline + ``s`` may differ by a token or two).
    """
    true = (layout.answer_end - layout.subject_end).double()
    pseudo = (layout.subject_end[:, 1:] - layout.answer_end[:, :-1]).double()
    return dict(true_pairs=float(true.mean()), pseudo_pairs=float(pseudo.mean()) if pseudo.numel() else float("nan"))
