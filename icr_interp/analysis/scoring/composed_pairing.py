"""A composed pairing score: the prediction position's attention composed across layers through the residual.

A deep model may pair in two steps: each answer position reads its own subject in an early layer, and the
prediction position then reads the answers.  No single head's row is pairwise, yet what reaches the
prediction position comes from both tokens of each pair.  The *effective row* follows attention through the
residual stream, as attention rollout does (Abnar & Zuidema 2020), with each layer's heads combined by their
OV share (:mod:`icr_interp.analysis.scoring.combined_rows`, the weights TransformerLens's composition scores are built
from):

    R_l = (I + A_l) / 2,      A_l = sum_h share_{l,h} pattern_{l,h}          (rows: destinations)
    effective_L = e_pred^T R_{L-1} ... R_0                                     (a distribution over positions)

The identity is the residual path: half of what a position holds stays its own.  The path
``pred -> a_i`` (layer l2) ``-> s_i`` (layer l1 < l2) puts ``R_l2[pred, a_i] R_l1[a_i, s_i]`` on ``s_i``, so the
composed row is balanced within pairs exactly when the answers read their own subjects as much as they keep
themselves.  The effective row's masses on ``(s_i, a_i)`` are scored with the pairing test, the adjacency
control and the mass floor (:mod:`icr_interp.analysis.scoring.pairing_evidence`), for every depth ``L``.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.scoring.combined_rows import ov_shares
from icr_interp.analysis.inputs import check_batch
from icr_interp.analysis.scoring.pairing_evidence import PairingEvidence, pairing_evidence
from icr_interp.analysis.scoring.templates import RoleMass
from icr_interp.model import hooks as H
from icr_interp.task.batch import Batch
from icr_interp.tl.compat import TLModel


def effective_rows(model: TLModel, batch: Batch, drop_sink: bool = False) -> Float[Tensor, "layer batch pos"]:
    """The prediction position's effective row after layers ``0..L`` for every ``L`` (rollout with the residual).

    ``drop_sink``: remove each layer's attention to the sink -- BOS, or the prompt's first token without one --
    and renormalise the rows over the rest (a row that only read the sink keeps itself).  Over many layers a
    rollout otherwise ends on the sink: on SmolLM2 (no BOS) the effective row holds 0.96 of its mass on the
    first subject by layer 9 and 1.000 at layer 30, and no pairing can show.
    """
    check_batch(model, batch)
    device = model.cfg.device
    names = {H.hook(layer, "pattern") for layer in range(model.cfg.n_layers)}
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens.to(device), names_filter=lambda name: name in names)
    shares = ov_shares(model).to(device)
    n_pos = batch.tokens.shape[1]
    eye = torch.eye(n_pos, device=device)
    rows = torch.arange(len(batch), device=device)
    pred = batch.layout.pred_pos.to(device)
    rollout = eye.expand(len(batch), n_pos, n_pos)  # R_L ... R_0 accumulated from the bottom: [batch dest src]
    out = []
    for layer in range(model.cfg.n_layers):
        pattern = cache[H.hook(layer, "pattern")].float()  # [batch head dest src]
        combined = torch.einsum("bhds,h->bds", pattern, shares[layer].float())
        if drop_sink:
            combined = _without_sink(combined, batch.layout.bos_pos.to(device).clamp_min(0), eye)
        rollout = torch.bmm((eye + combined) / 2, rollout)
        out.append(rollout[rows, pred])
    return torch.stack(out)


def _without_sink(combined: Tensor, sink: Tensor, eye: Tensor) -> Tensor:
    """Rows with the sink column zeroed and renormalised (an all-sink row becomes the identity row)."""
    keep = torch.ones_like(combined[:, :1, :])
    keep[torch.arange(len(sink)), 0, sink] = 0
    kept = combined * keep
    total = kept.sum(-1, keepdim=True)
    return torch.where(total > 1e-9, kept / total.clamp_min(1e-30), eye.expand_as(combined))


@dataclass(frozen=True)
class ComposedPairing:
    """The pairing evidence of the effective row at every depth (leading axis: the depth ``L``)."""

    evidence: PairingEvidence  # [layer] leading dims
    pair_mass: Float[Tensor, " layer"]  # mean mass of the effective row on the pairs

    @property
    def shown(self) -> bool:
        """Whether the full-depth effective row passes the pairing rule."""
        return bool(self.evidence.shown[-1])

    def to_dict(self) -> dict:
        return dict(per_depth=[self.evidence.at(layer) for layer in range(self.pair_mass.shape[0])],
                    shown=self.shown)


def composed_masses(model: TLModel, batch: Batch, drop_sink: bool = False) -> RoleMass:
    """Role masses ``[layer batch (pair)]`` of the effective rows."""
    return RoleMass.of(effective_rows(model, batch, drop_sink), batch.layout)


def composed_pairing(model: TLModel, batch: Batch, seed: int = 0, drop_sink: bool = False) -> ComposedPairing:
    """Score the effective rows of every depth with the pairing rule (see module docstring)."""
    mass = composed_masses(model, batch, drop_sink)
    return ComposedPairing(pairing_evidence(mass.subject.cpu(), mass.answer.cpu(), seed=seed),
                           mass.pair_mass.mean(-1).cpu())
