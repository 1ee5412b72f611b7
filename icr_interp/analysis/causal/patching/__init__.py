"""Activation patching: exact, batched, and by prompt role; attribution patching.

Activation patching (Meng et al., ROME; Wang et al., IOI) asks which activations
*cause* a behaviour.  Run the model on a *clean* prompt (it recalls the right
answer) and on a *corrupted* one that differs in one controlled detail (here: the
relation the context implies, or the query subject).  Then rerun the corrupted
prompt with one activation replaced (*patched*) by its value from the clean run
and measure, with a *metric* (any callable from logits ``[batch pos vocab]`` to
a scalar), how far the output moves back toward the clean behaviour.  Patching
clean into corrupted (*denoising*) finds activations that are *sufficient* to
restore the behaviour; patching corrupted into clean (*noising*) finds those
that are *necessary*.  Normalised so the corrupted run scores 0 and the clean
run 1, a patch scoring ~1 carries the whole difference between the prompts.

This package offers three layers:

* **Drop-in equivalents** of ``transformer_lens.patching``'s
  ``get_act_patch_resid_pre``, ``get_act_patch_attn_out``,
  ``get_act_patch_mlp_out``, ``get_act_patch_attn_head_out_by_pos`` and
  ``get_act_patch_attn_head_pattern_dest_src_pos``: same arguments, same output
  shape, same values -- but instead of one forward pass (and one ``.item()``)
  per cell, patched copies are stacked along the batch and run together, and
  only what a patch changes is recomputed.  In a one-layer attention + MLP
  model without normalisation (our IC-recall models) a patch of ``attn_out``,
  a head's ``z``, a pattern entry or ``mlp_out`` at position j changes only
  position j's residual, so only that row is pushed through the MLP and the
  unembedding; a ``resid_pre`` patch at j changes keys and values, so positions
  >= j are recomputed.  Rows whose patched value equals the corrupted value are
  not recomputed at all.  The patched logits are then assembled in full
  (corrupted logits with the changed rows replaced), so the result is exact
  for *any* metric, including ones that read every position or average over the
  batch.  Other models take a general path: patched copies stacked along the
  batch, run through ``model.run_with_hooks``.
* **Role-based patching** (:func:`patch_by_role`, :func:`patch_pattern_by_role`):
  patch by hook x prompt role (subjects, answers, a context pair, the query,
  BOS), with every example's positions taken from its own ``batch.layout``.
* **Attribution patching** (:func:`attribution_patch`): the first-order
  estimate ``grad(metric) . (clean - corrupted)`` from one forward and one
  backward pass, on the same hook x role grid.

The generic engine is :func:`patch_activations`: a list of :class:`Patch`
(hook, positions per example, optional head, optional source positions for
patterns) in, one metric value per patch out.  Each patch is computed by the
cheapest exact strategy of a table (``engine.STRATEGIES``): the one-layer
shortcut above, the *suffix recomputation* (blocks from the patched layer on,
positions from the patch on, the base run's keys and values before it: any
deep causal model), or the general hooked forward; ``strategy="general"``
forces the last.  A metric that declares the position it reads
(:class:`LogitDiff` does) gets only that row recomputed and unembedded.  Every intervention goes through
TransformerLens hooks (``run_with_hooks`` / ``model.hooks`` / ``run_with_cache``);
no hook outlives the call.  Every entry point checks its token ids first
(:func:`icr_interp.task.tokens.check_model_tokens`).

Modules, one job each:

=================  ==========================================================
``metrics``        :class:`LogitDiff`, :func:`logit_diff_metric`
``core``           :class:`Patch`, hook kinds, the shared hooked-write primitives
``engine``         :func:`patch_activations`, :func:`base_run`, the strategy table, the general path
``fast``           the one-layer recomputation (on :mod:`icr_interp.model.forward`)
``suffix``         the suffix recomputation of deep models (blocks and positions after the patch)
``heads``          :func:`patch_heads`: every head's ``z`` at one role, a ``[layer head]`` grid
``floor``          :func:`recompute_floor`: the token-blocks a list of patches must recompute, and their time
``screen``         :func:`screen_and_confirm`: AtP* screens every cell, exact patching confirms the top ones
``dropins``        the five ``get_act_patch_*`` equivalents of TransformerLens
``by_role``        :func:`patch_by_role`, :func:`patch_pattern_by_role`, :class:`RolePatchResult`
``attribution``    :func:`attribution_patch`
=================  ==========================================================

Example::

    from icr_interp.analysis.causal import patching
    clean, corrupted, n_dropped = task.corrupt_pairs(task.sample(64, seed=0), "relation", seed=1)
    result = patching.patch_by_role(model, clean, corrupted)  # prompts without a relation swap dropped
    print(result)                                  # hook x role grid; UNRELIABLE line if it is
    result[hook(0, "resid_pre"), "answers"]   # 0 = corrupted, 1 = clean
"""

from icr_interp.analysis.causal.patching.attribution import attribution_patch
from icr_interp.analysis.causal.patching.by_role import RolePatchResult, patch_by_role, patch_pattern_by_role
from icr_interp.analysis.causal.patching.core import (DEFAULT_MAX_LOGITS_BYTES, DEFAULT_MAX_ROWS, HEAD_HOOKS, MEMORY_HOOKS,
                                      PATTERN_HOOKS, Patch, Source)
from icr_interp.analysis.causal.patching.dropins import (get_act_patch_attn_head_out_by_pos,
                                         get_act_patch_attn_head_pattern_dest_src_pos, get_act_patch_attn_out,
                                         get_act_patch_mlp_out, get_act_patch_resid_pre)
from icr_interp.analysis.causal.patching.engine import STRATEGIES, BaseRun, base_run, patch_activations, strategy_for
from icr_interp.analysis.causal.patching.floor import Floor, recompute_floor, seconds_per_token_block
from icr_interp.analysis.causal.patching.heads import patch_heads
from icr_interp.analysis.causal.patching.screen import ScreenResult, screen_and_confirm
from icr_interp.analysis.causal.patching.metrics import LogitDiff, Metric, logit_diff_metric
from icr_interp._moved import module_attr

__all__ = [
    "LogitDiff", "Metric", "logit_diff_metric", "Patch", "Source", "BaseRun", "base_run", "patch_activations",
    "get_act_patch_resid_pre", "get_act_patch_attn_out", "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_pattern_dest_src_pos", "RolePatchResult",
    "patch_by_role", "patch_pattern_by_role", "attribution_patch",
    "HEAD_HOOKS", "PATTERN_HOOKS", "MEMORY_HOOKS", "DEFAULT_MAX_ROWS", "DEFAULT_MAX_LOGITS_BYTES",
    "STRATEGIES", "strategy_for", "patch_heads", "Floor", "recompute_floor", "seconds_per_token_block",
    "ScreenResult", "screen_and_confirm",
]


def __getattr__(name: str):
    return module_attr(__name__, name)  # the first release's names (icr_interp._moved)
