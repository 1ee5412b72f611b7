"""Per-head role patching: every head's ``z`` at one role's positions, a ``[layer head]`` grid.

The role patching of :func:`~icr_interp.analysis.causal.patching.by_role.patch_by_role` with one ``hook_z`` row per
head of every layer (or of ``layers``).  With the default metric (the logit difference at each example's
prediction position, which declares that position) and the default role (the prediction position itself),
each cell costs one row through the blocks from the patched layer on (the suffix strategy of
:mod:`~icr_interp.analysis.causal.patching.engine`): the per-head grid of a 30-layer model is affordable on a CPU.

Example::

    result = patching.patch_heads(model, clean, corrupted)   # a RolePatchResult
    result.heads()          # [layer head], 0 = corrupted, 1 = clean
    result.top_heads(10)    # [(layer, head), ...]
"""

from collections.abc import Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from icr_interp.analysis.inputs import check_batch
from icr_interp.analysis.causal.patching.by_role import RolePatchResult, patch_by_role
from icr_interp.analysis.causal.patching.metrics import Metric
from icr_interp.model import hooks as H
from icr_interp.task import roles as R
from icr_interp.task.batch import Batch
from icr_interp.tl.compat import TLModel


def patch_heads(model: TLModel, clean: Batch, corrupted: Batch, positions: Bool[Tensor, "batch pos"] | None = None,
                *, role: str = "prediction", metric: Metric | None = None, layers: Sequence[int] | None = None,
                n_answers: int | None = None, noising: bool = False, **options) -> RolePatchResult:
    """Patch every head's ``z`` (clean into corrupted) at ``positions`` (default: the role ``role``).

    Args:
        model: any HookedTransformer.
        clean, corrupted: matched batches.
        positions: ``[batch pos]`` mask of the patched positions (default: ``role``'s positions).
        role: a role name (:mod:`icr_interp.task.roles`); the result's column label.
        metric: as :func:`patch_by_role` (default: logit difference at the prediction position).
        layers: layers whose heads are patched (default: all).
        n_answers, noising, **options: as :func:`patch_by_role` (``strategy=``, ``max_rows=``, ...).

    Returns:
        A :class:`RolePatchResult` with one row per head (``blocks.L.attn.hook_z:h<i>``) and one column;
        ``.heads()`` is the ``[layer head]`` grid, ``.top_heads(n)`` the best heads.
    """
    check_batch(model, corrupted, "corrupted")
    if positions is None:
        positions = R.mask(corrupted.layout, role, corrupted.tokens.shape[1])
    layers = range(model.cfg.n_layers) if layers is None else layers
    hooks = [H.hook(layer, "z") for layer in layers]
    return patch_by_role(model, clean, corrupted, metric, hooks, {role: positions.to(corrupted.tokens.device)},
                         noising=noising, n_answers=n_answers, **options)


class _HeadGrid:
    """The first release's ``HeadPatchResult.to_dict()`` view of a per-head :class:`RolePatchResult`."""

    def __init__(self, result: RolePatchResult):
        self.result = result

    def to_dict(self) -> dict:
        r = self.result
        raw_grid = RolePatchResult(r.components, r.roles, r.raw, r.raw, r.clean_value, r.corrupted_value, r.mode,
                                   r.method).heads()
        return dict(values=r.heads().tolist(), raw=raw_grid.tolist(), clean_value=r.clean_value,
                    corrupted_value=r.corrupted_value, reliable=r.reliable, reason=r.reason,
                    top=[list(h) for h in r.top_heads(10)])


def patch_heads_v1(model: TLModel, clean: Batch, corrupted: Batch, positions: Tensor | None = None, *,
                   n_answers: int | None = None, max_rows: int = 4096) -> _HeadGrid:
    """``icr_interp.analysis.suffix_patching.patch_heads`` of the first release (old import path only): its
    ``to_dict()`` has ``values`` as ``[layer][head]`` and ``top``.  Use :func:`patch_heads`."""
    with torch.no_grad():
        return _HeadGrid(patch_heads(model, clean, corrupted, positions, n_answers=n_answers, max_rows=max_rows))
