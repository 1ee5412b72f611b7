"""Screen every cell by AtP*, confirm the top ones by exact patching, and say how well the two agree.

Attribution patching (AtP; Nanda 2023) estimates a patch's effect as ``grad(metric) . (source - base)`` from
one forward and one backward pass: exact where the output is linear in the activation, but blind where a
patch moves an attention softmax into or out of saturation.  AtP* (Kramar et al. 2024, "AtP*: An efficient
and scalable method for localizing LLM behaviour to components") fixes that for queries and keys (the *QK
fix*): a patch of a head's ``hook_q`` or ``hook_k`` changes the attention pattern through the softmax, so its
pattern is recomputed exactly (one call of that layer's attention, every cell stacked along the batch) and
only the step from the pattern to the metric is linearised: ``grad(metric wrt pattern) . (pattern' -
pattern)``.  (The paper's second fix, GradDrop against cancellation across layers, is not applied.)

:func:`screen_and_confirm` screens every cell of a hook x role grid (:func:`patch_by_role`'s) this way, patches
the ``n_confirm`` cells with the largest estimated effect exactly (the engine), plus ``n_audit`` random other
cells (so that a cell the screen missed can show up), and reports the agreement on the cells known exactly:
the recall of the exact top-``k`` by the screen's top-``n_confirm`` and the Spearman rank correlation of the
estimated and exact effects.  With ``exact_all=True`` every cell is patched exactly (a validation run): the
recall is then the true one.

Example::

    sc = patching.screen_and_confirm(model, clean, corrupted, hooks=[hooks.hook(l, "k") for l in range(30)],
                                     k=10)
    print(sc)   # recall of the exact top-10, rank correlation, the confirmed cells
"""

import math
from dataclasses import dataclass
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.causal.patching.attribution import _gradients, _reduce_to_index, _sum_entries
from icr_interp.analysis.causal.patching.by_role import (RolePatchResult, components, grid_masks,
                                                  result, role_patch, setup)
from icr_interp.analysis.causal.patching.core import where_hook
from icr_interp.analysis.causal.patching.engine import patch_activations
from icr_interp.analysis.causal.patching.metrics import Metric
from icr_interp.model import hooks as H
from icr_interp.task.batch import Batch
from icr_interp.tl.compat import TLModel

QK_SITES = H.QK_SITES  # hooks whose patches the QK fix recomputes through the softmax (the site table's qk column)


@dataclass
class ScreenResult:
    """An AtP* screen of a hook x role grid, its exactly patched cells, and their agreement."""

    estimate: RolePatchResult  # AtP* estimate of every cell (method "attribution*")
    exact: RolePatchResult  # exact patching where done (NaN elsewhere)
    confirmed: list[tuple[str, str]]  # (component, role) cells patched exactly because the screen ranked them top
    audited: list[tuple[str, str]]  # random other cells patched exactly (misses of the screen show up here)
    k: int  # size of the exact top-k whose recall is reported
    recall: float  # share of the exact top-k (among cells known exactly) inside the screen's confirmed cells
    rank_correlation: float  # Spearman correlation of estimated and exact effects on the cells known exactly
    n_exact: int  # cells known exactly
    exact_all: bool  # every cell was patched exactly (the recall is then the true one)

    def to_dict(self) -> dict:
        return dict(estimate=self.estimate.to_dict(), exact=self.exact.to_dict(),
                    confirmed=[list(c) for c in self.confirmed], audited=[list(c) for c in self.audited], k=self.k,
                    recall=self.recall, rank_correlation=self.rank_correlation, n_exact=self.n_exact,
                    exact_all=self.exact_all)

    def __str__(self) -> str:
        scope = "every cell" if self.exact_all else f"{self.n_exact} cells (confirmed + audited)"
        lines = [f"AtP* screen of {self.estimate.values.numel()} cells; exact patching of {scope}: recall of the "
                 f"exact top-{self.k} {self.recall:.2f}, Spearman rank correlation {self.rank_correlation:.2f}"]
        for comp, role in self.confirmed[:self.k]:
            lines.append(f"  {comp} x {role}: estimate {self.estimate[comp, role]:.3f}, exact {self.exact[comp, role]:.3f}")
        return "\n".join(lines)


def _ranks(x: Tensor) -> Tensor:
    return x.argsort().argsort().float()


def spearman(x: Float[Tensor, " n"], y: Float[Tensor, " n"]) -> float:
    """Spearman rank correlation (NaN for fewer than 3 values or a constant input)."""
    if len(x) < 3:
        return math.nan
    rx, ry = _ranks(x) - (len(x) - 1) / 2, _ranks(y) - (len(y) - 1) / 2
    denom = float(rx.norm() * ry.norm())
    return float((rx * ry).sum()) / denom if denom > 0 else math.nan


@torch.no_grad()
def _qk_estimates(model: TLModel, s, hook: str, head: int, masks: list[Tensor], grad_pattern: Tensor) -> Tensor:
    """AtP* of one (layer, q/k head) row: the exact pattern under each role's patch, dotted with the
    metric's gradient at the pattern.  All roles' patched copies run as one batch through the layer's attention."""
    layer = H.split(hook)[0]
    block, base = model.blocks[layer], s.run.cache
    x = block.ln1(base[H.hook(layer, "resid_pre")])
    n = x.shape[0]
    source, now = s.source_cache[hook], base[hook]
    entry = torch.stack([m.to(x.device).expand(n, -1) for m in masks])  # [role batch pos]
    heads = torch.arange(now.shape[2], device=x.device) == head
    entry = entry[..., None] & heads  # [role batch pos head]
    entry = entry.flatten(0, 1)
    reps = len(masks)
    patterns = {}

    def grab(act, hook):
        patterns["p"] = act
    fwd = [(hook, where_hook(entry, source.repeat(reps, 1, 1, 1))), (H.hook(layer, "pattern"), grab)]
    xs = x.repeat(reps, 1, 1)
    with model.hooks(fwd_hooks=fwd):
        block.attn(query_input=xs, key_input=xs, value_input=xs)
    patched = patterns["p"].reshape(reps, n, *patterns["p"].shape[1:])
    with model.hooks(fwd_hooks=[(H.hook(layer, "pattern"), grab)]):
        block.attn(query_input=x, key_input=x, value_input=x)
    delta = patched - patterns["p"][None]
    return (delta * grad_pattern[None]).flatten(1).sum(-1)  # [role]


def screen_and_confirm(model: TLModel, clean: Batch, corrupted: Batch, metric: Metric | None = None,
                       hooks: Sequence[str] | None = None, roles: Sequence[str] | dict | None = None, *,
                       k: int = 10, n_confirm: int | None = None, n_audit: int | None = None,
                       exact_all: bool = False, noising: bool = False, n_answers: int | None = None, seed: int = 0,
                       **options) -> ScreenResult:
    """AtP* on every cell of the hook x role grid, exact patching of its top cells, and their agreement.

    Args:
        model, clean, corrupted, metric, hooks, roles, noising, n_answers: as :func:`patch_by_role`.
        k: the exact top-k whose recall is reported.
        n_confirm: cells ranked top by the screen (by |estimated effect|) that are patched exactly (default 2k).
        n_audit: random other cells patched exactly (default k).
        exact_all: patch every cell exactly (validation: the true recall and rank correlation).
        seed: for the audit sample.
        **options: passed to :func:`patch_activations`.
    """
    hooks = list(hooks or H.component_hooks(model))
    rows = components(model, hooks)
    qk_layers = sorted({H.split(h)[0] for h in hooks if H.split(h) and H.split(h)[1] in QK_SITES})
    extra = [H.hook(layer, site) for layer in qk_layers for site in ("pattern", "resid_pre")]
    s = setup(model, clean, corrupted, metric, list(dict.fromkeys(hooks + extra)), noising, n_answers)
    masks, query = grid_masks(s, roles)
    mask_list = [m.to(query.device) for m in masks.values()]
    grad_hooks = sorted(set(hooks) | {H.hook(layer, "pattern") for layer in qk_layers})
    acts, grads = _gradients(model, s.base.tokens, grad_hooks, s.metric)
    m_base = s.m_clean if noising else s.m_corr
    est = []
    for _, hook, head in rows:
        split = H.split(hook)
        if split is not None and split[1] in QK_SITES:
            est.append(_qk_estimates(model, s, hook, head, mask_list, grads[H.hook(split[0], "pattern")]))
            continue
        attr = _reduce_to_index(hook, grads[hook] * (s.source_cache[hook].to(acts[hook].device) - acts[hook]))
        est.append(torch.stack([_sum_entries(hook, attr, head, m, query) for m in mask_list]))
    raw_est = m_base + torch.stack(est).detach() if est else torch.zeros(0, len(masks))
    estimate = result(rows, list(masks), raw_est, s, noising, "attribution*")
    n_cells, n_roles = raw_est.numel(), len(masks)
    n_confirm = min(n_cells, 2 * k if n_confirm is None else n_confirm)
    order = (raw_est.flatten().cpu() - m_base).abs().argsort(descending=True)
    confirmed = order[:n_confirm].tolist()
    rest = order[n_confirm:]
    g = torch.Generator().manual_seed(seed)
    n_audit = min(len(rest), k if n_audit is None else n_audit)
    audited = rest.tolist() if exact_all else rest[torch.randperm(len(rest), generator=g)[:n_audit]].tolist()
    cells = confirmed + audited
    patches = [role_patch(rows[i // n_roles][1], rows[i // n_roles][2], mask_list[i % n_roles], query) for i in cells]
    exact_raw = torch.full((n_cells,), math.nan)
    if patches:
        exact_raw[torch.tensor(cells)] = patch_activations(model, s.base.tokens, s.source_cache, patches, s.metric,
                                                           base_run=s.run, **options).cpu().float()
    exact = result(rows, list(masks), exact_raw, s, noising, "exact")
    known = torch.tensor(cells, dtype=torch.long)
    eff_exact = (exact_raw[known] - m_base).abs()
    kk = min(k, len(known))
    top_exact = set(known[eff_exact.argsort(descending=True)[:kk]].tolist())
    recall = len(top_exact & set(confirmed)) / kk if kk else math.nan
    rho = spearman(raw_est.flatten().cpu()[known] - m_base, exact_raw[known] - m_base)
    label = [(rows[i // n_roles][0], list(masks)[i % n_roles]) for i in range(n_cells)]
    return ScreenResult(estimate, exact, [label[i] for i in confirmed], [label[i] for i in audited], kk, recall, rho,
                        len(known), exact_all)
