"""Binding interchange (after Feng & Steinhardt 2023): from which layer does an answer position carry its subject?

Swap the residual stream at answer ``a_i``'s positions with answer ``a_j``'s (same prompt, ``i != j`` drawn per
prompt) at ``blocks.L.hook_resid_pre`` and run on.  Two references, per prompt:

* **token swap** -- the same swap at ``hook_embed`` (the token embeddings only): the prompt with ``a_i`` and
  ``a_j`` exchanged, so pair i now shows ``(s_i, a_j)``.  A model that infers the relation from the pairs
  predicts differently;
* **clean** -- no swap.

If at layer L each answer position already holds its own subject (the pair is *bound* there), moving the whole
residual moves the pair with it and the prediction follows the bound subject: it stays the clean one.  If the
position holds only its token, the prediction follows the token swap.  Per layer, on the prompts where the
token swap changes the logit difference by more than :data:`MIN_SWAP_EFFECT` (the informative ones):

    follows_bound = (ld_L - ld_token) / (ld_clean - ld_token)     (1: bound, 0: token only)

with its 95% bootstrap interval over prompts, and the share of prompts whose top-1 is the clean one.  Caveat:
after the layers where the prediction position has read the answers, any swap is harmless, so a late rise is
read together with the edge knockouts (:mod:`icr_interp.analysis.causal.edge_knockout`).  Spans of different length
are swapped aligned at their last token, over the shorter span.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from icr_interp.analysis.bootstrap import mean_ci
from icr_interp.analysis.causal.edge_knockout import prediction_margin
from icr_interp.analysis.inputs import check_batch
from icr_interp.model import hooks as H
from icr_interp.task.batch import Batch
from icr_interp.tl.compat import TLModel

MIN_SWAP_EFFECT = 0.5  # a prompt is informative when the token swap moves its logit difference by more than this


@dataclass(frozen=True)
class BindingCurve:
    """Per layer: whether the prediction follows the bound subject after the residual swap."""

    layers: tuple  # the layers swapped at (hook_resid_pre)
    follows_bound: tuple  # mean (ld_L - ld_token) / (ld_clean - ld_token) over informative prompts, per layer
    follows_bound_ci: tuple  # 95% bootstrap intervals, per layer
    keeps_clean_top1: tuple  # share of informative prompts whose top-1 correctness is the clean run's, per layer
    token_swap_change: float  # mean ld_token - ld_clean over all prompts (what the mis-pairing costs)
    n_informative: int
    n_prompts: int

    def to_dict(self) -> dict:
        return dict(layers=list(self.layers), follows_bound=list(self.follows_bound),
                    follows_bound_ci=[list(c) for c in self.follows_bound_ci],
                    keeps_clean_top1=list(self.keeps_clean_top1), token_swap_change=self.token_swap_change,
                    n_informative=self.n_informative, n_prompts=self.n_prompts, min_swap_effect=MIN_SWAP_EFFECT)


def swap_pairs(batch: Batch, seed: int = 0) -> Int[Tensor, "batch 2"]:
    """The two pair indices ``(i, j)``, ``i != j``, swapped in each prompt (seeded)."""
    k = batch.layout.answer_end.shape[1]
    if k < 2:
        raise ValueError("binding interchange needs k >= 2 pairs")
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(len(batch), k, generator=gen).argsort(-1)[:, :2]


def _swap_hook(batch: Batch, pairs: Tensor, device):
    lay = batch.layout.to(device)
    rows = torch.arange(len(batch), device=device)
    i, j = pairs[:, 0].to(device), pairs[:, 1].to(device)
    end_i, end_j = lay.answer_end[rows, i], lay.answer_end[rows, j]
    length = torch.minimum(end_i - lay.answer_start[rows, i], end_j - lay.answer_start[rows, j]) + 1

    def swap(act, hook):  # [batch pos d_model]
        out = act.clone()
        for back in range(int(length.max())):
            ok = back < length
            pi, pj = (end_i - back)[ok], (end_j - back)[ok]
            out[rows[ok], pi], out[rows[ok], pj] = act[rows[ok], pj], act[rows[ok], pi]
        return out

    return swap


def binding_interchange(model: TLModel, batch: Batch, layers=None, seed: int = 0) -> BindingCurve:
    """The binding curve of ``model`` on ``batch`` (see module docstring); ``layers`` default: every layer."""
    check_batch(model, batch)
    layers = tuple(range(model.cfg.n_layers) if layers is None else layers)
    pairs = swap_pairs(batch, seed)
    hook = _swap_hook(batch, pairs, model.cfg.device)
    clean = prediction_margin(model, batch)
    token = prediction_margin(model, batch, [("hook_embed", hook)])
    gap = clean - token
    informative = gap.abs() > MIN_SWAP_EFFECT
    follows, cis, keeps = [], [], []
    for layer in layers:
        ld = prediction_margin(model, batch, [(H.hook(layer, "resid_pre"), hook)])
        if informative.any():
            frac = ((ld - token) / gap)[informative]
            stats = mean_ci(frac, seed=seed)
            follows.append(stats["mean"])
            cis.append((stats["lo"], stats["hi"]))
            keeps.append(float(((ld > 0) == (clean > 0))[informative].float().mean()))
        else:
            follows.append(float("nan"))
            cis.append((float("nan"), float("nan")))
            keeps.append(float("nan"))
    return BindingCurve(layers, tuple(follows), tuple(cis), tuple(keeps), float((token - clean).mean()),
                        int(informative.sum()), len(batch))
