"""The position-matched control of the pairing test: is a row's answer balanced with *its own prompt's* subject?

The re-pairing null of :mod:`icr_interp.analysis.scoring.pairing_test` moves answers to other pairs, hence to other
positions.  When the prompt layout is fixed (every toy prompt puts pair i at the same two positions), a head
whose attention is a fixed function of position -- a random-weight head, say -- balances the true pairs
better or worse than re-paired ones by that function alone, the same in every prompt, so with 128 prompts it
"beats" the null at any level.  The adjacency control catches a *smooth* profile, not a rough one: measured on
54 random-weight toy models, 38 have a head that beats both at p <= 0.01, one by 0.096 in attention mass.

This control keeps the positions and breaks the prompt: pair ``i``'s subject mass in prompt ``b`` against pair
``i``'s answer mass in another prompt ``b'`` (same pair index, so the same place in a toy prompt).  A positional
profile, and anything else that does not tie the two masses within a prompt, balances the own prompt's pair
no better than another prompt's.  Each role is normalised on its own, ``s~ = s / sum_i s_i`` and
``a~ = a / sum_i a_i`` (a shared normaliser ``M`` would tie a prompt's subject and answer totals and make its
own pairs look *less* balanced than other prompts'); with ``D(b, b') = sum_i |s~_{b,i} - a~_{b',i}|``:

    effect_b = (mean_{b' != b} D(b, b') - D(b, b)) / 2          (renormalised; times M_b in attention mass)

and the p-value is a randomisation over permutations of the prompts' answer vectors (exact when the prompts'
answer masses are exchangeable given their subject masses).
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.scoring.pairing_null import NULL_DRAWS, NULL_SEED, TIE_TOL, draw_means
from icr_interp.analysis.scoring.pairing_test import check_masses



@dataclass(frozen=True)
class PositionControl:
    """The own prompt's pairing against other prompts' at the same pair index (leading dims as the inputs')."""

    effect: Float[Tensor, "*lead"]  # mean renormalised effect (half-L1 units)
    effect_mass: Float[Tensor, "*lead"]  # the same in attention mass
    p_value: Float[Tensor, "*lead"]  # one-sided randomisation p over permutations of the prompts
    rows_mass: Float[Tensor, "*lead batch"]  # per-row effect in attention mass

    def at(self, *idx) -> dict:
        return dict(effect=float(self.effect[idx]), effect_mass=float(self.effect_mass[idx]),
                    p_value=float(self.p_value[idx]))


def position_control(subject: Float[Tensor, "*lead batch pair"], answer: Float[Tensor, "*lead batch pair"], *,
                     draws: int = NULL_DRAWS, seed: int = NULL_SEED) -> PositionControl:
    """Compare each prompt's own pairs with the same pair index of the other prompts (needs >= 2 prompts)."""
    check_masses(subject, answer)
    subject, answer = subject.clamp_min(0).double(), answer.clamp_min(0).double()
    mass = (subject + answer).sum(-1)
    s, a = _profile(subject), _profile(answer)  # each role on its own: a shared normaliser would tie them
    n = s.shape[-2]
    if n < 2:
        zero = torch.zeros(s.shape[:-1], dtype=torch.float64, device=s.device)
        return PositionControl(zero.mean(-1).float(), zero.mean(-1).float(), torch.ones(s.shape[:-2]), zero.float())
    table = (s[..., :, None, :] - a[..., None, :, :]).abs().sum(-1)  # [*lead b b']: D(b, b')
    own = table.diagonal(dim1=-2, dim2=-1)  # [*lead b]
    others = (table.sum(-1) - own) / (n - 1)
    rows = (others - own) / 2
    gen = torch.Generator().manual_seed(seed)
    perms = torch.rand(draws, n, generator=gen).argsort(-1).to(s.device)
    observed = own.mean(-1)
    drawn = draw_means(table, perms)  # [*lead draw]: prompt b's subjects with prompt pi(b)'s answers
    hits = (drawn <= observed[..., None] + TIE_TOL).sum(-1).to(observed.dtype)
    p = (1 + hits) / (1 + draws)
    return PositionControl(rows.mean(-1).float(), (rows * mass).mean(-1).float(), p.float(), (rows * mass).float())


def _profile(mass: Tensor) -> Tensor:
    """Masses scaled to sum to 1 over the pairs (zeros stay zeros)."""
    total = mass.sum(-1, keepdim=True)
    return torch.where(total > 0, mass / total.clamp_min(1e-30), torch.zeros_like(mass))
