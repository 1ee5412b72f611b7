"""Attention-edge knockout (after Geva et al. 2023): block attention from one group of positions to another.

To ask whether information flows along an edge -- the prediction position reading the answers, an answer
reading its own subject -- set the attention *scores* of that edge to ``-inf`` in a window of layers
(``hook_attn_scores``, after the causal mask; the softmax then renormalises the row over what is left), run
the model, and compare its prediction with the clean run's.  Every example blocks its own positions
(``batch.layout``: multi-token spans whole, the prediction position of each prompt).

Groups (``source -> target``; the source attends, the target is attended to):

==========================  =============================================================
``prediction -> answers``   the prediction position to every answer span ``a_i``
``prediction -> subjects``  the prediction position to every subject span ``s_i``
``prediction -> query``     the prediction position to the query span (not to itself)
``answer -> own_subject``   each answer span ``a_i`` to its own subject ``s_i``
``answer -> other_subjects``each answer span ``a_i`` to the other pairs' subjects (earlier ones)
==========================  =============================================================

Reported, per prompt then as means with 95% bootstrap intervals over prompts: the change in *logit
difference* (the target's logit minus the largest other logit: > 0 exactly when top-1 is right) and the
change in top-1 accuracy.  :func:`knockout_profile` slides a window over the layers for each group.

Example::

    r = edge_knockout(model, batch, "prediction", "answers", layers=range(18, 22))
    r.logit_diff_change, r.logit_diff_ci, r.accuracy_change
"""

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from icr_interp.analysis.bootstrap import mean_ci
from icr_interp.analysis.inputs import check_batch
from icr_interp.model import hooks as H
from icr_interp.model.forward import unembed
from icr_interp.task.batch import Batch
from icr_interp.task.layout import Layout
from icr_interp.tl.compat import TLModel

GROUPS = (("prediction", "answers"), ("prediction", "subjects"), ("prediction", "query"),
          ("answer", "own_subject"), ("answer", "other_subjects"))


def edge_mask(layout: Layout, source: str, target: str, n_pos: int) -> Bool[Tensor, "batch dest src"]:
    """``mask[b, d, s]``: the edge from position ``d`` to position ``s`` of example ``b`` is blocked."""
    if (source, target) not in GROUPS:
        raise ValueError(f"unknown edge group {source} -> {target}; known: "
                         + ", ".join(f"{a} -> {b}" for a, b in GROUPS))
    m = layout.span_masks(n_pos)
    if source == "prediction":
        tgt = dict(answers=m.answer.any(1), subjects=m.subject.any(1), query=m.query)[target]
        mask = m.prediction[:, :, None] & tgt[:, None, :]
    else:
        own = torch.einsum("bkd,bks->bds", m.answer.float(), m.subject.float()) > 0  # a_i -> s_i
        every = m.answer.any(1)[:, :, None] & m.subject.any(1)[:, None, :]
        mask = own if target == "own_subject" else every & ~own
    pos = torch.arange(n_pos, device=mask.device)
    return mask & (pos[None, :, None] != pos[None, None, :]) & (pos[None, None, :] <= pos[None, :, None])


@dataclass(frozen=True)
class KnockoutResult:
    """One edge group blocked in one window of layers."""

    source: str
    target: str
    layers: tuple  # the blocked layers
    logit_diff_change: float  # mean over prompts of (knocked-out - clean) logit difference
    logit_diff_ci: tuple  # its 95% bootstrap interval
    accuracy_change: float  # knocked-out - clean top-1 accuracy
    accuracy_ci: tuple  # its 95% bootstrap interval
    clean_accuracy: float
    clean_logit_diff: float
    edges_per_prompt: float  # mean number of (dest, src) edges blocked per prompt and layer
    n_prompts: int

    def to_dict(self) -> dict:
        return dict(source=self.source, target=self.target, layers=list(self.layers),
                    logit_diff_change=self.logit_diff_change, logit_diff_ci=list(self.logit_diff_ci),
                    accuracy_change=self.accuracy_change, accuracy_ci=list(self.accuracy_ci),
                    clean_accuracy=self.clean_accuracy, clean_logit_diff=self.clean_logit_diff,
                    edges_per_prompt=self.edges_per_prompt, n_prompts=self.n_prompts)


def prediction_margin(model: TLModel, batch: Batch, fwd_hooks: list | None = None) -> Float[Tensor, " batch"]:
    """Target logit minus the largest other logit at each prediction position, under ``fwd_hooks``."""
    device = model.cfg.device
    pred = batch.layout.pred_pos.to(device)
    rows = torch.arange(len(batch), device=device)
    keep = {}
    last = H.hook(model.cfg.n_layers - 1, "resid_post")
    hooks = list(fwd_hooks or []) + [(last, lambda act, hook: keep.__setitem__("x", act[rows, pred]))]
    with torch.no_grad():
        model.run_with_hooks(batch.tokens.to(device), return_type=None, fwd_hooks=hooks)
        x = keep["x"]
        if getattr(model, "ln_final", None) is not None:
            x = model.ln_final(x[:, None])[:, 0]
        logits = unembed(model, x).float()
    target = batch.answers.to(device)
    right = logits[rows, target]
    other = logits.scatter(1, target[:, None], float("-inf")).max(-1).values
    return (right - other).cpu()


def knockout_hooks(model: TLModel, mask: Bool[Tensor, "batch dest src"], layers: Iterable[int]) -> list:
    """``hook_attn_scores`` hooks that set the masked edges to ``-inf`` in ``layers``."""
    mask = mask.to(model.cfg.device)

    def block(scores, hook):  # [batch head dest src]
        return scores.masked_fill(mask[:, None], float("-inf"))

    return [(H.hook(layer, "attn_scores"), block) for layer in layers]


def edge_knockout(model: TLModel, batch: Batch, source: str, target: str, layers: Iterable[int], *,
                  seed: int = 0, clean: Tensor | None = None) -> KnockoutResult:
    """Block ``source -> target`` attention in ``layers`` and measure the prediction (see module docstring).

    Args:
        model: any HookedTransformer.
        batch: prompts with their layout.
        source, target: an edge group of :data:`GROUPS`.
        layers: the window of layers to block in (each in ``[0, n_layers)``).
        seed: seeds the bootstrap.
        clean: the clean run's margins, if already computed (:func:`prediction_margin`).
    """
    check_batch(model, batch)
    layers = tuple(sorted({int(layer) for layer in layers}))
    if not layers or layers[0] < 0 or layers[-1] >= model.cfg.n_layers:
        raise ValueError(f"layers must be a non-empty set in [0, {model.cfg.n_layers}), got {list(layers)}")
    mask = edge_mask(batch.layout, source, target, batch.tokens.shape[1])
    clean = prediction_margin(model, batch) if clean is None else clean
    knocked = prediction_margin(model, batch, knockout_hooks(model, mask, layers))
    diff = mean_ci(knocked - clean, seed=seed)
    acc = mean_ci((knocked > 0).float() - (clean > 0).float(), seed=seed)
    return KnockoutResult(source, target, layers, diff["mean"], (diff["lo"], diff["hi"]), acc["mean"],
                          (acc["lo"], acc["hi"]), float((clean > 0).float().mean()), float(clean.mean()),
                          float(mask.sum((1, 2)).float().mean()), len(batch))


def knockout_profile(model: TLModel, batch: Batch, window: int = 1, groups: Iterable[tuple] = GROUPS,
                     seed: int = 0, stride: int = 1) -> dict:
    """``{"source -> target": [KnockoutResult per window start]}``: a window of ``window`` layers slid over depth
    by ``stride`` layers (the last window always ends at the last layer)."""
    n = model.cfg.n_layers
    if not 1 <= window <= n or stride < 1:
        raise ValueError(f"window must be in [1, {n}] and stride >= 1, got {window}, {stride}")
    starts = sorted(set(range(0, n - window + 1, stride)) | {n - window})
    clean = prediction_margin(model, batch)
    return {f"{s} -> {t}": [edge_knockout(model, batch, s, t, range(start, start + window), seed=seed, clean=clean)
                            for start in starts] for s, t in groups}
