"""Patching by prompt role: a hook x role grid, every example's positions taken from its own layout.

Roles are :mod:`icr_interp.task.roles`'s (``subjects``, ``answers``, ``context``,
``pair_i``, ``subject_i``, ``answer_i``, ``query``, ``bos``, ``all``).  Every
result says whether it can be trusted (:mod:`icr_interp.analysis.causal.reliability`): its
clean - corrupted gap must stand out of its spread over the examples, and the
model must be above chance on the clean prompts; otherwise ``reliable`` is
False and ``reason`` says why.  Normalised values outside
:data:`~icr_interp.analysis.causal.reliability.NORMALISED_RANGE` are listed in ``warnings``.
"""

import math
import warnings
from dataclasses import dataclass, field
from collections import Counter
from collections.abc import Sequence

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.inputs import check_batch
from icr_interp.model import hooks as H
from icr_interp.analysis.causal import reliability

from icr_interp.task import roles as R
from icr_interp.tl.compat import TLModel, is_bridge
from icr_interp.analysis.causal.patching.core import Patch, kind
from icr_interp.analysis.causal.patching.engine import BRIDGE_FALLBACK, BaseRun, base_run, patch_activations, strategy_for
from icr_interp.analysis.causal.patching.engine import allowed_strategies
from icr_interp.analysis.causal.patching.metrics import LogitDiff, Metric
from icr_interp.task.batch import Batch


def components(model: TLModel, hooks: Sequence[str]) -> list[tuple[str, str, int | None]]:
    """(label, hook, head) rows: per-head and pattern hooks expand into one row per head."""
    out = []
    for hook in hooks:
        if hook not in model.hook_dict:
            raise ValueError(f"unknown hook name {hook!r}")
        if kind(hook) == "pos":
            out.append((hook, hook, None))
        else:  # grouped-query attention: keys and values have their own (fewer) heads
            kv = H.kv_heads(hook) and getattr(model.cfg, "n_key_value_heads", None)
            out += [(f"{hook}:h{h}", hook, h) for h in range(kv or model.cfg.n_heads)]
    return out


@dataclass
class RolePatchResult:
    """Patching (or attribution) results on a component x role grid."""

    components: list[str]  # row labels: hook name, with ":h<i>" for one head
    roles: list[str]  # column labels (source roles for pattern rows)
    values: Float[Tensor, "component role"]  # normalised metric: 0 = corrupted run, 1 = clean run
    raw: Float[Tensor, "component role"]  # metric value of each patch (estimated, for attribution)
    clean_value: float  # metric on the clean run
    corrupted_value: float  # metric on the corrupted run
    mode: str  # "denoise" (clean into corrupted) or "noise" (corrupted into clean)
    method: str  # "exact" or "attribution"
    reliable: bool = True  # the gap stands out of its spread and the model is above chance
    reason: str = ""  # why the normalised values are unreliable ("" when reliable)
    reliability: dict = field(default_factory=dict)  # the numbers behind it (Reliability.to_dict)
    warnings: list[str] = field(default_factory=list)  # normalised values outside the sane range
    strategies: dict = field(default_factory=dict)  # recompute strategy -> number of hooks it computed
    note: str = ""  # how the engine ran, where it is not the cheapest path (e.g. the TransformerBridge fallback)

    def __getitem__(self, key: tuple[str, str]) -> float:
        component, role = key
        return float(self.values[self.components.index(component), self.roles.index(role)])

    def heads(self, role: str | None = None, site: str = "z") -> Float[Tensor, "layer head"]:
        """The ``[layer head]`` grid of one role's per-head rows of ``site`` (NaN where a head was not patched)."""
        col = self.roles.index(role if role is not None else self.roles[0])
        cells = {}
        for i, c in enumerate(self.components):
            hook, _, head = c.partition(":h")
            split = H.split(hook)
            if head and split is not None and split[1] == site:
                cells[split[0], int(head)] = float(self.values[i, col])
        n_layers = 1 + max((layer for layer, _ in cells), default=-1)
        n_heads = 1 + max((h for _, h in cells), default=-1)
        grid = torch.full((n_layers, n_heads), math.nan)
        for (layer, h), v in cells.items():
            grid[layer, h] = v
        return grid

    def top_heads(self, n: int = 10, role: str | None = None, site: str = "z") -> list[tuple[int, int]]:
        """The ``n`` heads whose patch restores the most (largest first), as ``(layer, head)``."""
        grid = self.heads(role, site)
        order = torch.nan_to_num(grid, nan=-math.inf).flatten().argsort(descending=True)[:n].tolist()
        return [(i // grid.shape[1], i % grid.shape[1]) for i in order if not math.isnan(grid.flatten()[i])]

    def to_dict(self) -> dict:
        return dict(components=list(self.components), roles=list(self.roles), values=self.values.tolist(),
                    raw=self.raw.tolist(), clean_value=self.clean_value, corrupted_value=self.corrupted_value,
                    mode=self.mode, method=self.method, reliable=self.reliable, reason=self.reason,
                    reliability=dict(self.reliability), warnings=list(self.warnings),
                    strategies=dict(self.strategies), note=self.note)

    def __str__(self) -> str:
        width = max(len(c) for c in self.components) if self.components else 10
        cols = [max(7, len(r)) for r in self.roles]
        head = f"{self.method} patching ({self.mode}); normalised metric: 0 = corrupted " \
               f"({self.corrupted_value:.3f}), 1 = clean ({self.clean_value:.3f})"
        lines = [head] + ([] if self.reliable else [f"UNRELIABLE: {self.reason}"])
        lines.append(" " * width + "  " + "  ".join(r.rjust(w) for r, w in zip(self.roles, cols)))
        for c, row in zip(self.components, self.values.tolist()):
            lines.append(c.ljust(width) + "  " + "  ".join(f"{v:{w}.3f}" for v, w in zip(row, cols)))
        return "\n".join(lines + [f"warning: {w}" for w in self.warnings] + ([f"note: {self.note}"] if self.note else []))


@dataclass(frozen=True)
class _Setup:
    """Clean and corrupted runs, the metric, and how far its baselines can be trusted."""

    base: Batch  # the batch patched into (corrupted for denoising)
    run: BaseRun  # its cached run
    source_cache: dict  # the other run's activations
    metric: Metric
    m_clean: float  # metric on the clean run
    m_corr: float  # metric on the corrupted run
    trust: reliability.Reliability


def setup(model: TLModel, clean: Batch, corrupted: Batch, metric: Metric | None, hooks: Sequence[str],
          noising: bool, n_answers: int | None = None) -> _Setup:
    """Clean and corrupted runs (cached at ``hooks``), the metric, its baselines and their reliability."""
    check_batch(model, clean, "clean")
    check_batch(model, corrupted, "corrupted")
    if clean.tokens.shape != corrupted.tokens.shape:
        raise ValueError("clean and corrupted batches must have the same shape")
    dev = model.cfg.device
    clean, corrupted = clean.to(dev), corrupted.to(dev)
    hooks = [h for h in hooks if h in model.hook_dict]  # unknown names are reported by components()
    clean_run, corr_run = base_run(model, clean.tokens, hooks), base_run(model, corrupted.tokens, hooks)
    if metric is None:
        metric = LogitDiff(clean.answers, corrupted.answers, clean.layout.pred_pos)
    m_clean, m_corr = float(metric(clean_run.logits)), float(metric(corr_run.logits))
    trust = assess(clean, corrupted, clean_run.logits, corr_run.logits, metric, m_clean, m_corr, n_answers)
    base, runs = (clean, (clean_run, corr_run)) if noising else (corrupted, (corr_run, clean_run))
    return _Setup(base, runs[0], runs[1].cache, metric, m_clean, m_corr, trust)


def assess(clean: Batch, corrupted: Batch, clean_logits: Tensor, corr_logits: Tensor, metric: Metric,
           m_clean: float, m_corr: float, n_answers: int | None = None) -> reliability.Reliability:
    """Reliability of a clean/corrupted pair: per-example gap (metrics with ``per_example``) and chance.

    Chance is ``1 / n_answers``; without ``n_answers`` the number of distinct
    targets in both batches stands in for it (a lower bound on the answer set,
    so chance is overestimated: the check errs toward "unreliable").
    """
    per_example = getattr(metric, "per_example", None)
    with torch.no_grad():
        values = (per_example(clean_logits), per_example(corr_logits)) if per_example else (None, None)
        rows = torch.arange(len(clean), device=clean_logits.device)
        predicted = clean_logits[rows, clean.layout.pred_pos.to(rows.device)].argmax(-1)
        accuracy = float((predicted == clean.answers.to(rows.device)).float().mean())
    n_answers = n_answers or len(set(clean.answers.tolist()) | set(corrupted.answers.tolist()))
    return reliability.assess(*values, m_clean, m_corr, accuracy, 1.0 / n_answers, len(clean))


def role_patch(hook: str, head: int | None, mask: Tensor, query: Tensor) -> Patch:
    """A role's patch: its positions, or, for pattern hooks, the query row's entries from its positions."""
    if kind(hook) == "pattern":
        return Patch(hook, query, head=head, src=mask)
    return Patch(hook, mask, head=head)


def result(rows: list, roles: list, raw: Tensor, s: _Setup, noising: bool, method: str) -> RolePatchResult:
    """The normalised grid, with its reliability and range warnings (each also raised as a RuntimeWarning)."""
    raw = einops.rearrange(raw.flatten(), "(component role) -> component role", role=len(roles)).detach().cpu().float()
    scale = s.m_clean - s.m_corr
    values = (raw - s.m_corr) / (scale if scale != 0 else math.nan)
    if not s.trust.reliable:
        warnings.warn(f"normalised patching values are unreliable: {s.trust.reason}", RuntimeWarning, stacklevel=3)
    labels = [f"{c[0]} x {r}" for c in rows for r in roles]
    notes = reliability.out_of_range(values, labels)
    if notes:
        warnings.warn(f"{len(notes)} normalised patching values outside {reliability.NORMALISED_RANGE}: {notes[0]}",
                      RuntimeWarning, stacklevel=3)
    return RolePatchResult([c[0] for c in rows], list(roles), values, raw, s.m_clean, s.m_corr,
                           "noise" if noising else "denoise", method, s.trust.reliable, s.trust.reason,
                           s.trust.to_dict(), notes)


def grid_masks(s: _Setup, roles: Sequence[str] | dict | None) -> tuple[dict, Tensor]:
    """The role masks (a dict passes through) and the prediction-position mask of the patched batch (the
    destination row of pattern patches: the query in toy prompts)."""
    n_pos = s.base.tokens.shape[1]
    masks = roles if isinstance(roles, dict) else R.masks(s.base.layout, n_pos, roles)
    return masks, R.mask(s.base.layout, "prediction", n_pos)


def patch_by_role(model: TLModel, clean: Batch, corrupted: Batch, metric: Metric | None = None,
                  hooks: Sequence[str] | None = None, roles: Sequence[str] | dict | None = None, *,
                  noising: bool = False, n_answers: int | None = None, **options) -> RolePatchResult:
    """Exact activation patching by hook x prompt role, positions taken per example from the layout.

    Args:
        model: the model.
        clean, corrupted: matched batches (e.g. ``task.corrupt_pairs(batch, kind, seed)``).
        metric: callable on logits (default: logit difference clean vs corrupted answer at the query).
        hooks: hook names (default :func:`~icr_interp.model.hooks.component_hooks`); per-head hooks give one row per head;
            ``hook_pattern`` rows patch the query row's entries from the role's positions.
        roles: role names (:mod:`icr_interp.task.roles`) or a dict name -> ``[batch pos]`` mask.
        noising: patch corrupted activations into the clean run instead of clean into corrupted.
        n_answers: size of the answer set, for the chance check (default: distinct targets in the batches).
        **options: passed to :func:`patch_activations` (``strategy="general"`` forces the hooked forward).

    Returns:
        A :class:`RolePatchResult` (normalised: 0 = corrupted, 1 = clean), with ``reliable`` and ``reason``.
    """
    hooks = list(hooks or H.component_hooks(model))
    rows = components(model, hooks)
    s = setup(model, clean, corrupted, metric, hooks, noising, n_answers)
    masks, query = grid_masks(s, roles)
    patches = [role_patch(hook, head, m.to(query.device), query) for _, hook, head in rows for m in masks.values()]
    raw = patch_activations(model, s.base.tokens, s.source_cache, patches, s.metric, base_run=s.run, **options)
    out = result(rows, list(masks), raw, s, noising, "exact")
    allowed = allowed_strategies(options.get("strategy"), options.get("fast"))
    out.strategies = dict(Counter(strategy_for(model, hook, allowed) for hook in dict.fromkeys(hooks)))
    out.note = BRIDGE_FALLBACK if is_bridge(model) else ""
    return out


def patch_pattern_by_role(model: TLModel, clean: Batch, corrupted: Batch, metric: Metric | None = None,
                          roles: Sequence[str] | dict | None = None, layers: Sequence[int] | None = None, *,
                          noising: bool = False, **options) -> RolePatchResult:
    """Patch the query row of each head's attention pattern (every layer by default), entries grouped by source role.

    Rows are ``blocks.L.attn.hook_pattern:h<i>``, columns source roles; see :func:`patch_by_role`.
    """
    layers = range(model.cfg.n_layers) if layers is None else layers
    hooks = [H.hook(layer, "pattern") for layer in layers]
    return patch_by_role(model, clean, corrupted, metric, hooks, roles, noising=noising, **options)
