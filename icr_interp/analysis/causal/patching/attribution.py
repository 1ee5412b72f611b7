"""Attribution patching: the first-order estimate ``grad(metric) . (source - base)`` of every role patch.

One forward and one backward pass give the estimate of every cell of
:func:`~icr_interp.analysis.causal.patching.by_role.patch_by_role`'s grid: the gradient of the
metric at the base run, dotted with the change a patch would make, summed over
``d_model`` (or ``d_head``, per head) and over the role's positions in every
example.  It is exact where the output is linear in the activation and
underestimates saturating (ReLU) effects.
"""

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.tl.compat import TLModel
from icr_interp.analysis.causal.patching.by_role import RolePatchResult, components, grid_masks, result, setup
from icr_interp.analysis.causal.patching.core import INDEX_DIMS, kind
from icr_interp.analysis.causal.patching.metrics import Metric
from icr_interp.model import hooks as H
from icr_interp.task.batch import Batch


def attribution_patch(model: TLModel, clean: Batch, corrupted: Batch, metric: Metric | None = None,
                      hooks: Sequence[str] | None = None, roles: Sequence[str] | dict | None = None, *,
                      noising: bool = False, n_answers: int | None = None) -> RolePatchResult:
    """Attribution patching: ``grad(metric at the base run) . (source - base activation)`` per hook x role.

    The metric must be differentiable and return a scalar.  Arguments as
    :func:`~icr_interp.analysis.causal.patching.by_role.patch_by_role`.

    Returns:
        A :class:`RolePatchResult` with ``method="attribution"``; ``raw`` is the
        base metric plus the estimated change.
    """
    hooks = list(hooks or H.component_hooks(model))
    rows_of = components(model, hooks)
    s = setup(model, clean, corrupted, metric, hooks, noising, n_answers)
    masks, query = grid_masks(s, roles)
    acts, grads = _gradients(model, s.base.tokens, sorted(set(hooks)), s.metric)
    rows = []
    for _, hook, head in rows_of:
        attr = _reduce_to_index(hook, grads[hook] * (s.source_cache[hook].to(acts[hook].device) - acts[hook]))
        rows.append(torch.stack([_sum_entries(hook, attr, head, m.to(attr.device), query) for m in masks.values()]))
    m_base = s.m_clean if noising else s.m_corr
    raw = m_base + torch.stack(rows) if rows else torch.zeros(0)
    return result(rows_of, list(masks), raw, s, noising, "attribution")


def _gradients(model: TLModel, tokens: Tensor, hooks: Sequence[str], metric: Metric) -> tuple[dict, dict]:
    """Activations at ``hooks`` and the metric's gradient with respect to them (parameters' .grad untouched)."""
    acts, leaves = {}, {}

    def add_leaf(act: Tensor, hook) -> Tensor:
        # act + 0 with a zero leaf: d metric / d leaf is the total derivative at this hook,
        # and the graph through later hooks stays intact.
        acts[hook.name] = act.detach()
        leaves[hook.name] = torch.zeros_like(act, requires_grad=True)
        return act + leaves[hook.name]

    with torch.enable_grad(), model.hooks(fwd_hooks=[(h, add_leaf) for h in hooks]):
        value = metric(model(tokens))
    names = list(leaves)
    grads = torch.autograd.grad(value, [leaves[n] for n in names], allow_unused=True)
    return acts, {n: torch.zeros_like(acts[n]) if g is None else g for n, g in zip(names, grads)}


def _reduce_to_index(hook: str, attr: Tensor) -> Tensor:
    keep = 1 + INDEX_DIMS[kind(hook)]
    return attr.flatten(keep).sum(-1) if attr.ndim > keep else attr


def _sum_entries(hook: str, attr: Tensor, head: int | None, mask: Tensor, query: Tensor) -> Float[Tensor, ""]:
    """Sum of attributions over the entries a role patch would replace (all examples)."""
    k = kind(hook)
    if k == "pos":
        return (attr * mask).sum()
    if k == "head":
        return (attr[:, :, head] * mask).sum()
    return (attr[:, head] * (query[:, :, None] & mask[:, None, :])).sum()
