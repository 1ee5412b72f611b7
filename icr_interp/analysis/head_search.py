"""Which heads carry a job: attribution patching over every head, exact patching of the ones it ranks first.

On a pretrained LM exact patching of every head is expensive (30 layers x 9 heads, one patched run each),
so attribution patching (:func:`~icr_interp.analysis.patching.attribution_patch`: one forward and one
backward give a first-order estimate for all heads) is the prefilter, and the ``top`` heads it ranks first
by absolute effect -- plus any ``also`` -- are patched exactly.  The agreement of the two on those heads is
reported (Pearson and Spearman correlation, sign agreement, largest gap), so a reader sees how far the
estimate can be trusted on this model; ``exact_all=True`` patches every head and reports the overlap of the
two top-``top`` sets as well.

Each head's effect is its output (``hook_z``) at a role's positions (default: the prediction position)
patched clean -> corrupted (denoising), normalised 0 = corrupted run, 1 = clean run, with the reliability
of :func:`~icr_interp.analysis.patching.by_role.setup` (a swap that barely moves the output is flagged).

Example::

    pairs = task.sample_pairs(32, "relation", seed=0)
    found = head_effects(model, pairs.clean, pairs.corrupted, top=10)
    print(found)        # heads ranked by exact effect, attribution beside, agreement
"""

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from icr_interp.analysis.patching import attribution_patch, patch_activations
from icr_interp.analysis.patching.by_role import role_patch, setup
from icr_interp.model import hooks as H
from icr_interp.plumbing import check_int
from icr_interp.task import roles as R
from icr_interp.task.prompts import Batch
from icr_interp.tl.compat import TLModel


@dataclass(frozen=True)
class HeadEffects:
    """Attribution estimate of every head, exact effect of the heads patched, and their agreement."""

    attribution: Tensor  # [layer head] normalised attribution estimate
    exact: dict  # (layer, head) -> normalised exact effect, for the heads patched exactly
    role: str  # the positions patched
    reliable: bool  # the clean/corrupted pair moves the output beyond its noise (patching.reliability)
    reason: str  # why not reliable ("" when reliable)
    agreement: dict = field(default_factory=dict)  # pearson, spearman, sign_agreement, max_gap (+ top_overlap)

    def ranked(self) -> list[tuple[tuple[int, int], float, float]]:
        """Exactly patched heads by decreasing exact effect: ``((layer, head), exact, attribution)``."""
        return sorted(((h, v, float(self.attribution[h])) for h, v in self.exact.items()), key=lambda x: -x[1])

    def to_dict(self) -> dict:
        return dict(role=self.role, reliable=self.reliable, reason=self.reason, agreement=dict(self.agreement),
                    attribution=self.attribution.tolist(),
                    exact=[dict(layer=h[0], head=h[1], exact=v, attribution=a) for h, v, a in self.ranked()])

    def __str__(self) -> str:
        lines = [f"HeadEffects at {self.role}: {len(self.exact)} heads patched exactly of "
                 f"{self.attribution.numel()} estimated" + ("" if self.reliable else f"; UNRELIABLE: {self.reason}"),
                 "  agreement " + ", ".join(f"{k} {v:.3f}" for k, v in self.agreement.items()),
                 f"  {'head':>7} {'exact':>7} {'attrib':>7}"]
        lines += [f"  L{h[0]:>2}H{h[1]:<2} {v:7.3f} {a:7.3f}" for h, v, a in self.ranked()]
        return "\n".join(lines)

    __repr__ = __str__


def head_effects(model: TLModel, clean: Batch, corrupted: Batch, *, role: str = "prediction", top: int = 10,
                 also: Sequence[tuple[int, int]] = (), exact_all: bool = False) -> HeadEffects:
    """Attribution over every head's output at ``role``, exact patching of the ``top`` it ranks first.

    Args:
        model: any ``HookedTransformer``.
        clean, corrupted: matched batches (``task.corrupt_pairs`` / ``task.sample_pairs``).
        role: where each head's output is patched (a :mod:`icr_interp.task.roles` name).
        top: heads patched exactly, by decreasing absolute attribution.
        also: further ``(layer, head)`` pairs patched exactly.
        exact_all: patch every head exactly (slow on a large model), and report the top-``top`` overlap.
    """
    check_int(top, "top", 0)
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    hooks = [H.hook(layer, "z") for layer in range(n_layers)]
    attr = attribution_patch(model, clean, corrupted, hooks=hooks, roles=[role])
    estimate = attr.values[:, 0].reshape(n_layers, n_heads)
    order = estimate.abs().flatten().argsort(descending=True).tolist()
    chosen = [divmod(i, n_heads) for i in order] if exact_all else \
        list(dict.fromkeys([divmod(i, n_heads) for i in order[:top]] + [tuple(h) for h in also]))
    exact = dict(zip(chosen, _exact(model, clean, corrupted, chosen, role))) if chosen else {}
    agreement = _agreement(estimate, exact)
    if exact_all and top:
        best = lambda scores: {h for h, _ in sorted(scores.items(), key=lambda x: -abs(x[1]))[:top]}  # noqa: E731
        est = {divmod(i, n_heads): float(v) for i, v in enumerate(estimate.flatten())}
        agreement["top_overlap"] = len(best(est) & best(exact)) / top
    return HeadEffects(estimate, exact, role, attr.reliable, attr.reason, agreement)


def _exact(model: TLModel, clean: Batch, corrupted: Batch, heads: list[tuple[int, int]], role: str) -> list[float]:
    """Normalised denoising effect of each head's output at ``role`` (one patched run per head)."""
    layers = sorted({layer for layer, _ in heads})
    s = setup(model, clean, corrupted, None, [H.hook(layer, "z") for layer in layers], noising=False)
    n_pos = s.base.tokens.shape[1]
    mask, dest = R.mask(s.base.layout, role, n_pos), R.mask(s.base.layout, "prediction", n_pos)
    patches = [role_patch(H.hook(layer, "z"), head, mask, dest) for layer, head in heads]
    raw = patch_activations(model, s.base.tokens, s.source_cache, patches, s.metric, base_run=s.run)
    gap = s.m_clean - s.m_corr
    return ((raw.detach().cpu().float() - s.m_corr) / (gap if gap != 0 else math.nan)).tolist()


def _agreement(estimate: Tensor, exact: dict) -> dict:
    if len(exact) < 2:
        return {}
    e = torch.tensor(list(exact.values()))
    a = torch.tensor([float(estimate[h]) for h in exact])
    corr = lambda x, y: float(torch.corrcoef(torch.stack([x, y]))[0, 1])  # noqa: E731
    rank = lambda x: x.argsort().argsort().float()  # noqa: E731
    return dict(pearson=corr(a, e), spearman=corr(rank(a), rank(e)),
                sign_agreement=float(((a > 0) == (e > 0)).float().mean()), max_gap=float((a - e).abs().max()))
