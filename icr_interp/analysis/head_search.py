"""Which heads carry a job: attribution patching over every head, exact patching of the ones it ranks first.

On a pretrained LM exact patching of every head is expensive (30 layers x 9 heads, one patched run each),
so attribution patching (:func:`~icr_interp.analysis.causal.patching.attribution_patch`: one forward and one
backward give a first-order estimate for all heads) is the prefilter, and the ``top`` heads it ranks first
by absolute effect -- plus any ``also`` -- are patched exactly.  The agreement of the two on those heads is
reported (Pearson and Spearman correlation, sign agreement, largest gap), so a reader sees how far the
estimate can be trusted on this model; ``exact_all=True`` patches every head and reports the overlap of the
two top-``top`` sets as well.

Each head's effect is its output (``hook_z``) at a role's positions (default: the prediction position)
patched clean -> corrupted (denoising), normalised 0 = corrupted run, 1 = clean run, with the reliability
of :func:`~icr_interp.analysis.causal.patching.by_role.setup` (a swap that barely moves the output is flagged).

:func:`function_vector_effects` is the field's standard for in-context-learning heads (Todd et al. 2024,
"Function vectors in large language models"): each head's mean output at the prediction position over
clean prompts is written into prompts whose answers are shuffled across the pairs (the task's ``"shuffle"``
corruption), and the head's *causal indirect effect* is the gain in the target's probability.  Heads that
carry relation inference by role patching can be compared with it on the same model.

Example::

    pairs = task.sample_pairs(32, "relation", seed=0)
    found = head_effects(model, pairs.clean, pairs.corrupted, top=10)
    print(found)        # heads ranked by exact effect, attribution beside, agreement
"""

import math
from dataclasses import dataclass, field
from collections.abc import Sequence

import torch
from torch import Tensor

from icr_interp.analysis.causal.patching import attribution_patch, patch_activations
from icr_interp.analysis.causal.patching.by_role import role_patch, setup
from icr_interp.model import hooks as H
from icr_interp.plumbing import check_int
from icr_interp.task import roles as R
from icr_interp.task.batch import Batch
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


@torch.no_grad()
def function_vector_effects(model: TLModel, clean: Batch, shuffled: Batch,
                            heads: Sequence[tuple[int, int]] | None = None) -> Tensor:
    """Causal indirect effect of every head (Todd et al. 2024): ``[layer head]``, NaN for heads not measured.

    Args:
        model: any ``HookedTransformer``.
        clean: prompts whose mean head outputs are taken (at each example's prediction position).
        shuffled: the same prompts with their answers shuffled across the pairs
            (``task.corrupt_pairs(clean, "shuffle")``); the target is unchanged.
        heads: the ``(layer, head)`` pairs to measure (default: all; one forward of ``shuffled`` each).

    Returns:
        Per head, mean over prompts of ``P(target | shuffled, head := mean clean output) - P(target | shuffled)``.
    """
    from icr_interp.training.trainer import prediction_logits

    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    heads = [divmod(i, n_heads) for i in range(n_layers * n_heads)] if heads is None else [tuple(h) for h in heads]
    dev = model.cfg.device
    clean, shuffled = clean.to(dev), shuffled.to(dev)
    rows = torch.arange(len(clean), device=dev)
    means = {}
    grab = lambda act, hook: means.__setitem__(hook.name, act[rows, clean.layout.pred_pos].mean(0))  # noqa: E731
    model.run_with_hooks(clean.tokens, return_type=None,
                         fwd_hooks=[(H.hook(layer, "z"), grab) for layer in sorted({h[0] for h in heads})])
    prob = lambda logits: logits.float().softmax(-1)[rows, shuffled.answers]  # noqa: E731
    base = prob(prediction_logits(model, shuffled))
    out = torch.full((n_layers, n_heads), math.nan)
    pred = shuffled.layout.pred_pos
    for layer, head in heads:
        name = H.hook(layer, "z")

        def put(act, hook, head=head, name=name):
            act = act.clone()
            act[rows, pred, head] = means[name][head].to(act.dtype)
            return act
        with model.hooks(fwd_hooks=[(name, put)]):
            out[layer, head] = float((prob(prediction_logits(model, shuffled)) - base).mean())
    return out
