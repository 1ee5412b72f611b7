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

This module offers three layers:

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
patterns) in, one metric value per patch out.  Every intervention goes through
TransformerLens hooks (``run_with_hooks`` / ``model.hooks`` / ``run_with_cache``);
no hook outlives the call.
"""

import math
import warnings
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import ActivationCache, HookedTransformer
from transformer_lens.utilities.activation_functions import apply_softcap

from icr_interp.task import Batch, Layout

Metric = Callable[[Float[Tensor, "batch pos vocab"]], Tensor | float]
Source = ActivationCache | dict

# Per-head activations are [batch pos head ...]; patterns are [batch head dest src].
HEAD_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_result", "hook_rot_q", "hook_rot_k",
              "hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in")
PATTERN_HOOKS = ("hook_pattern", "hook_attn_scores")
MEMORY_HOOKS = ("hook_relation", "hook_rel_post", "hook_post")  # memory stages patched by role
DEFAULT_MAX_ROWS = 2048  # residual rows pushed through the MLP per chunk (bounds memory)
DEFAULT_MAX_LOGITS_BYTES = 2**28  # assembled patched logits held at once


# ============================================================== metrics
@dataclass(frozen=True)
class LogitDiff:
    """Mean over the batch of ``logit[clean answer] - logit[corrupted answer]`` at the query.

    With ``clean_value`` and ``corrupted_value`` set (see :meth:`calibrated`) the
    metric is normalised: 0 = corrupted run, 1 = clean run.
    """

    clean_answers: Int[Tensor, " batch"]  # token the clean prompt should produce
    corrupted_answers: Int[Tensor, " batch"]  # token the corrupted prompt should produce
    query_pos: Int[Tensor, " batch"] | None = None  # where to read the logits (None: last position)
    clean_value: float | None = None  # raw metric on the clean run (normalisation)
    corrupted_value: float | None = None  # raw metric on the corrupted run (normalisation)

    def raw(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        rows = torch.arange(logits.shape[0], device=logits.device)
        pos = torch.full_like(rows, logits.shape[1] - 1) if self.query_pos is None else self.query_pos.to(rows.device)
        last = logits[rows, pos]  # [batch vocab]
        clean, corrupted = self.clean_answers.to(rows.device), self.corrupted_answers.to(rows.device)
        return (last[rows, clean] - last[rows, corrupted]).mean()

    def __call__(self, logits: Float[Tensor, "batch pos vocab"]) -> Float[Tensor, ""]:
        value = self.raw(logits)
        if self.clean_value is None or self.corrupted_value is None:
            return value
        return (value - self.corrupted_value) / (self.clean_value - self.corrupted_value)

    def calibrated(self, clean_logits: Float[Tensor, "batch pos vocab"],
                   corrupted_logits: Float[Tensor, "batch pos vocab"]) -> "LogitDiff":
        """The normalised metric (0 = ``corrupted_logits``, 1 = ``clean_logits``)."""
        with torch.no_grad():
            clean, corrupted = float(self.raw(clean_logits)), float(self.raw(corrupted_logits))
        return replace(self, clean_value=clean, corrupted_value=corrupted)


def logit_diff_metric(clean_answers: Int[Tensor, " batch"], corrupted_answers: Int[Tensor, " batch"],
                      query_pos: Int[Tensor, " batch"] | None = None, *,
                      clean_logits: Float[Tensor, "batch pos vocab"] | None = None,
                      corrupted_logits: Float[Tensor, "batch pos vocab"] | None = None) -> LogitDiff:
    """Logit-difference metric at each example's query (normalised when both baseline logits are given).

    Args:
        clean_answers: target token of each clean prompt.
        corrupted_answers: target token of each corrupted prompt.
        query_pos: per-example position to read (default: the last position).
        clean_logits, corrupted_logits: baseline runs; with both, 0 = corrupted and 1 = clean.
    """
    metric = LogitDiff(clean_answers, corrupted_answers, query_pos)
    if clean_logits is not None and corrupted_logits is not None:
        metric = metric.calibrated(clean_logits, corrupted_logits)
    return metric


# ============================================================== patches
@dataclass(frozen=True)
class Patch:
    """One patch: which entries of one activation take the source run's value.

    For per-position activations (``[batch pos ...]``) ``positions`` says which
    positions; per-head activations (``[batch pos head ...]``) add ``head``;
    attention patterns (``[batch head dest src]``) read ``positions`` as
    destinations and ``src`` as sources.  A batch dimension of 1 broadcasts.
    """

    hook: str  # full hook name, e.g. "blocks.0.hook_resid_pre"
    positions: Bool[Tensor, "batch pos"]  # patched (destination) positions per example
    head: int | None = None  # head index (None: all heads)
    src: Bool[Tensor, "batch pos"] | None = None  # source positions, patterns only (None: all)


def _kind(hook: str) -> str:
    leaf = hook.split(".")[-1]
    if leaf in PATTERN_HOOKS:
        return "pattern"
    return "head" if leaf in HEAD_HOOKS else "pos"


_INDEX_DIMS = {"pos": 1, "head": 2, "pattern": 3}  # dims after batch that a patch indexes


def _entry_masks(patches: Sequence[Patch], batch: int, n_pos: int, n_heads: int,
                 device) -> Bool[Tensor, "patch batch ..."]:
    """Which entries each patch replaces, per example: ``[patch batch *index_dims]``."""
    kind = _kind(patches[0].hook)
    pos = torch.stack([p.positions.to(device).expand(batch, n_pos) for p in patches])
    if kind == "pos":
        return pos
    head = torch.tensor([-1 if p.head is None else p.head for p in patches], device=device)
    heads = (torch.arange(n_heads, device=device)[None] == head[:, None]) | (head[:, None] < 0)  # [patch head]
    if kind == "head":
        return pos[..., None] & heads[:, None, None, :]
    src = torch.stack([torch.ones(batch, n_pos, dtype=torch.bool, device=device) if p.src is None
                       else p.src.to(device).expand(batch, n_pos) for p in patches])
    return heads[:, None, :, None, None] & pos[:, :, None, :, None] & src[:, :, None, None, :]


def _differs(kind: str, source: Tensor, base: Tensor) -> Bool[Tensor, "batch ..."]:
    """Entries (at the patch's index granularity) where source and base differ."""
    ne = source != base
    keep = 1 + _INDEX_DIMS[kind]
    return ne.flatten(keep).any(-1) if ne.ndim > keep else ne


def _where_hook(mask: Tensor, values: Tensor) -> Callable:
    """A TransformerLens hook writing ``values`` wherever ``mask`` (broadcast over trailing dims) holds."""
    def hook(act: Tensor, hook) -> Tensor:
        m = mask[(...,) + (None,) * (act.ndim - mask.ndim)]  # broadcast over the trailing dims
        return torch.where(m, values.to(act.dtype), act)
    return hook


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + max(1, size)))


# ============================================================== the engine
@dataclass
class _Run:
    """Everything a batch of patches needs: model, base run, source activations."""

    model: HookedTransformer
    tokens: Tensor  # [batch pos] base-run tokens
    logits: Tensor  # [batch pos vocab] base-run logits
    base: dict  # base-run activations by hook name
    source: Source  # source-run activations by hook name
    fast: bool  # one-layer path available
    max_rows: int  # rows per recomputation chunk

    def src(self, hook: str) -> Tensor:
        try:
            return self.source[hook].to(self.tokens.device)
        except KeyError as err:
            raise KeyError(f"the source cache has no activation {hook!r}; cache it (names_filter)") from err


def fast_path_applies(model: HookedTransformer) -> bool:
    """Whether ``model`` is a one-layer attention + MLP model the recomputation shortcut is exact for."""
    c = model.cfg
    plain = not (c.parallel_attn_mlp or c.use_attn_in or c.use_split_qkv_input or c.use_normalization_before_and_after
                 or getattr(c, "load_in_4bit", False))
    left_pad = model.tokenizer is not None and getattr(model.tokenizer, "padding_side", "right") == "left"
    return (c.n_layers == 1 and c.normalization_type is None and c.positional_embedding_type == "standard"
            and c.original_architecture is None and plain and not left_pad
            and c.n_key_value_heads in (None, c.n_heads))


def _fast_class(hook: str, model: HookedTransformer) -> str | None:
    """Which part of the one-layer forward a hook sits in (None: use the general path)."""
    if not hook.startswith("blocks.0."):
        return None
    rest = hook[len("blocks.0."):]
    if rest in ("hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores"):
        return "attn_in"
    if rest in ("attn.hook_z", "attn.hook_pattern", "attn.hook_result", "hook_attn_out"):
        return "attn_out"
    if model.cfg.attn_only:
        return None
    if rest == "hook_resid_mid" or rest.startswith("mlp."):
        return "mlp"
    return "post" if rest in ("hook_mlp_out", "hook_resid_post") else None


def _base_hooks(model: HookedTransformer, hooks: Sequence[str], fast: bool) -> set[str]:
    """Hooks the engine reads from the base run: the patched ones, plus the one-layer path's inputs."""
    names = set(hooks)
    if fast:
        names |= {"blocks.0.hook_resid_pre", "blocks.0.attn.hook_v", "blocks.0.attn.hook_z",
                  "blocks.0.attn.hook_pattern"}
        names |= set() if model.cfg.attn_only else {"blocks.0.hook_resid_mid"}
        names |= {"blocks.0.attn.hook_result"} if model.cfg.use_attn_result else set()
    return names


@dataclass(frozen=True)
class BaseRun:
    """A cached run of the base (corrupted) prompts, reusable across patching calls on them."""

    tokens: Int[Tensor, "batch pos"]  # the prompts
    logits: Float[Tensor, "batch pos vocab"]  # their logits
    cache: dict  # activations by hook name


@torch.no_grad()
def base_run(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
             hooks: Sequence[str] | None = None) -> BaseRun:
    """Run ``tokens`` once and cache what patching needs (every hook when ``hooks`` is None).

    Pass the result as ``base_run=`` to :func:`patch_activations` or any drop-in
    to share one base forward pass between several patching calls.
    """
    tokens = tokens.to(model.cfg.device)
    names = None if hooks is None else _base_hooks(model, hooks, fast_path_applies(model))
    logits, cache = model.run_with_cache(tokens, names_filter=None if names is None else (lambda n: n in names))
    return BaseRun(tokens, logits, dict(cache.cache_dict))


def _checked_base(model: HookedTransformer, tokens: Tensor, hooks: Sequence[str], fast: bool,
                  given: BaseRun | None) -> BaseRun:
    if given is None:
        return base_run(model, tokens, hooks)
    if given.tokens.shape != tokens.shape or not torch.equal(given.tokens.to(tokens.device), tokens):
        raise ValueError("base_run was computed on other tokens than the ones patched")
    missing = sorted(_base_hooks(model, hooks, fast) - set(given.cache))
    if missing:
        raise ValueError(f"base_run lacks activations {missing}; build it with base_run(model, tokens)")
    return given


@torch.no_grad()
def patch_activations(model: HookedTransformer, tokens: Int[Tensor, "batch pos"], source_cache: Source,
                      patches: Sequence[Patch], metric: Metric, *, fast: bool | None = None,
                      max_rows: int = DEFAULT_MAX_ROWS,
                      max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
                      base_run: BaseRun | None = None) -> Float[Tensor, "patch ..."]:
    """Run ``tokens`` once per patch with the patched entries taken from ``source_cache``; metric per patch.

    Args:
        model: any ``HookedTransformer``.
        tokens: the base run's tokens (corrupted ones for denoising).
        source_cache: activations of the source run (clean for denoising) for every patched hook.
        patches: what to patch, one metric value each.
        metric: callable from the full patched logits ``[batch pos vocab]`` to a scalar (or tensor).
        fast: use the one-layer recomputation shortcut (default: whenever :func:`fast_path_applies`).
        max_rows: rows per recomputation chunk (memory bound).
        max_logits_bytes: bytes of assembled patched logits held at once.
        base_run: the base run of ``tokens`` from :func:`base_run` (default: run it here).

    Returns:
        ``[patch, *metric_shape]``: exactly what one hooked forward per patch would give.
    """
    fast = fast_path_applies(model) if fast is None else fast and fast_path_applies(model)
    tokens = tokens.to(model.cfg.device)
    unknown = sorted({p.hook for p in patches} - set(model.hook_dict))
    if unknown:
        raise ValueError(f"unknown hook names {unknown}")
    base = _checked_base(model, tokens, [p.hook for p in patches], fast, base_run)
    logits = base.logits
    run = _Run(model, tokens, logits, base.cache, source_cache, fast, max_rows)
    base_value = torch.as_tensor(metric(logits))
    values: list = [None] * len(patches)
    per_chunk = max(1, max_logits_bytes // max(1, logits.numel() * logits.element_size()))
    for hook in dict.fromkeys(p.hook for p in patches):
        idx = [i for i, p in enumerate(patches) if p.hook == hook]
        for sl in _chunks(len(idx), per_chunk):
            chunk = [patches[i] for i in idx[sl]]
            for i, v in zip(idx[sl], _patch_chunk(run, hook, chunk, metric, base_value)):
                values[i] = v
    out = torch.stack([torch.as_tensor(v, device=logits.device) for v in values]) if values else logits.new_zeros(0)
    return out.to(device=model.cfg.device, dtype=torch.get_default_dtype())


def _patch_chunk(run: _Run, hook: str, chunk: Sequence[Patch], metric: Metric, base_value: Tensor) -> list:
    """Metric values of one chunk of patches on the same hook."""
    batch, n_pos = run.tokens.shape
    source, base = run.src(hook), run.base[hook]
    kind = _kind(hook)
    n_heads = source.shape[1] if kind == "pattern" else source.shape[2] if kind == "head" else 1
    entries = _entry_masks(chunk, batch, n_pos, n_heads, run.tokens.device)
    changed = (entries & _differs(kind, source, base)[None]).flatten(2).any(-1)  # [patch batch]
    if not bool(changed.any()):
        return [base_value] * len(chunk)
    si, sb = changed.nonzero(as_tuple=True)  # one stacked sample per changed (patch, example)
    s_idx, pos, rows = (torch.cat(t) for t in zip(*_recompute(run, hook, entries[si, sb], sb)))
    patch_of_row = si[s_idx]
    order = torch.argsort(patch_of_row, stable=True)
    counts = torch.bincount(patch_of_row, minlength=len(chunk)).tolist()  # one sync per chunk
    b_rows, p_rows, rows = sb[s_idx][order], pos[order], rows[order]
    buf, values, start = torch.empty_like(run.logits), [], 0
    for n in counts:
        if n == 0:
            values.append(base_value)
            continue
        sl, start = slice(start, start + n), start + n
        buf.copy_(run.logits)  # the base logits with this patch's rows replaced
        buf[b_rows[sl], p_rows[sl]] = rows[sl]
        values.append(_own(metric(buf), buf))
    return values


def _own(value, buf: Tensor):
    """The metric's value, copied if it is a view of the reused logits buffer."""
    if isinstance(value, Tensor) and value.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr():
        return value.clone()
    return value


def _recompute(run: _Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Patched logits of stacked samples, as (sample index, position, logits row) triples."""
    cls = _fast_class(hook, run.model) if run.fast else None
    if cls is None:
        return _general(run, hook, entry, rows)
    return {"attn_in": _fast_attn_in, "attn_out": _fast_attn_out, "mlp": _fast_mlp, "post": _fast_post}[cls](
        run, hook, entry, rows)


def _general(run: _Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Any model: patched copies stacked along the batch, one hooked forward per chunk."""
    n_pos = run.tokens.shape[1]
    source = run.src(hook)
    for sl in _chunks(len(rows), run.max_rows // n_pos):
        patch = _where_hook(entry[sl], source[rows[sl]])
        logits = run.model.run_with_hooks(run.tokens[rows[sl]], fwd_hooks=[(hook, patch)])
        s = torch.arange(sl.start, sl.stop, device=rows.device)
        yield (einops.repeat(s, "s -> (s p)", p=n_pos), einops.repeat(torch.arange(n_pos, device=rows.device),
               "p -> (s p)", s=len(s)), einops.rearrange(logits, "s p v -> (s p) v"))


def _patched_positions(hook: str, entry: Tensor) -> Bool[Tensor, "sample pos"]:
    """Positions (destinations, for patterns) a sample's patch touches."""
    kind = _kind(hook)
    return entry if kind == "pos" else entry.any(-1) if kind == "head" else entry.any(1).any(-1)


def _fast_attn_in(run: _Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Patch at attention's input: rerun attention, then the MLP at positions >= the first patched one."""
    n_pos, block = run.tokens.shape[1], run.model.blocks[0]
    touched = _patched_positions(hook, entry)
    first = (touched.long().cumsum(1) == 0).sum(1)  # first patched position per sample
    later = torch.arange(n_pos, device=rows.device)[None] >= first[:, None]
    if run.model.cfg.attention_dir != "causal":
        later = torch.ones_like(later)  # bidirectional: every position sees the patch
    for sl in _chunks(len(rows), run.max_rows // n_pos):
        x = run.base["blocks.0.hook_resid_pre"][rows[sl]]
        fwd = [] if hook.endswith("hook_resid_pre") else [(hook, _where_hook(entry[sl], run.src(hook)[rows[sl]]))]
        if not fwd:
            x = torch.where(entry[sl][..., None], run.src(hook)[rows[sl]], x)
        with run.model.hooks(fwd_hooks=fwd):
            attn_out = block.attn(query_input=x, key_input=x, value_input=x)
        s, p = later[sl].nonzero(as_tuple=True)
        yield s + sl.start, p, _mlp_logits(run, x[s, p] + attn_out[s, p])


def _fast_attn_out(run: _Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Patch at attention's output: recompute the patched destination rows only."""
    s_all, p_all = _patched_positions(hook, entry).nonzero(as_tuple=True)
    for sl in _chunks(len(s_all), run.max_rows):
        s, p = s_all[sl], p_all[sl]
        b = rows[s]
        out = _attn_out_rows(run, hook, entry, s, b, p)
        yield s, p, _mlp_logits(run, run.base["blocks.0.hook_resid_pre"][b, p] + out)


def _attn_out_rows(run: _Run, hook: str, entry: Tensor, s: Tensor, b: Tensor,
                   p: Tensor) -> Float[Tensor, "row d_model"]:
    """Attention output at (example b, position p) with the patch of sample s applied."""
    attn, leaf = run.model.blocks[0].attn, hook.split(".")[-1]
    if leaf == "hook_attn_out":
        return run.src(hook)[b, p]
    if leaf == "hook_pattern":
        em = entry[s, :, p, :]  # [row head src]
        pattern = torch.where(em, run.src(hook)[b, :, p, :], run.base[hook][b, :, p, :])
        v = run.base["blocks.0.attn.hook_v"][b]  # [row src head d_head]
        z = einops.einsum(pattern.to(v.dtype), v, "r h s, r s h e -> r h e")
    else:  # hook_z or hook_result: per-head rows
        hm = entry[s, p][..., None]  # [row head 1]
        z = torch.where(hm, run.src(hook)[b, p], run.base[hook][b, p])
        if leaf == "hook_result":
            return z.sum(1) + attn.b_O
    if run.model.cfg.use_attn_result:
        return einops.einsum(z, attn.W_O, "r h e, h e d -> r h d").sum(1) + attn.b_O
    w = einops.rearrange(attn.W_O, "h e d -> d (h e)")
    return F.linear(einops.rearrange(z, "r h e -> r (h e)"), w, attn.b_O)


def _fast_mlp(run: _Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Patch at the MLP's input or inside it: recompute the MLP at the patched positions."""
    s_all, p_all = entry.nonzero(as_tuple=True)
    for sl in _chunks(len(s_all), run.max_rows):
        s, p = s_all[sl], p_all[sl]
        b = rows[s]
        if hook.endswith("hook_resid_mid"):
            yield s, p, _mlp_logits(run, run.src(hook)[b, p])
        else:
            yield s, p, _mlp_logits(run, run.base["blocks.0.hook_resid_mid"][b, p], hook, run.src(hook)[b, p])


def _fast_post(run: _Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Patch after the MLP: only the unembedding of the patched rows."""
    s, p = entry.nonzero(as_tuple=True)
    b = rows[s]
    post = run.src(hook)[b, p]
    if hook.endswith("hook_mlp_out"):
        post = run.base["blocks.0.hook_resid_mid"][b, p] + post
    yield s, p, _unembed(run.model, post)


def _mlp_logits(run: _Run, resid_mid: Float[Tensor, "row d_model"], hook: str | None = None,
                hook_values: Tensor | None = None) -> Float[Tensor, "row vocab"]:
    """Logits of residual rows after the (one) block's MLP, optionally patching a hook inside it."""
    if run.model.cfg.attn_only:
        return _unembed(run.model, resid_mid)
    out = []
    for sl in _chunks(len(resid_mid), run.max_rows):
        x = resid_mid[sl]
        fwd = [] if hook is None else [(hook, _where_hook(torch.ones(len(x), 1, dtype=torch.bool, device=x.device),
                                                          hook_values[sl][:, None]))]
        with run.model.hooks(fwd_hooks=fwd):
            mlp_out = run.model.blocks[0].mlp(x[:, None])[:, 0]
        out.append(_unembed(run.model, x + mlp_out))
    return torch.cat(out)


def _unembed(model: HookedTransformer, resid: Float[Tensor, "row d_model"]) -> Float[Tensor, "row vocab"]:
    return apply_softcap(model.unembed(resid[:, None]), model.cfg.output_logits_soft_cap)[:, 0]


# ============================================================== drop-ins
def _grid(model: HookedTransformer, corrupted_tokens: Tensor, clean_cache: Source, metric: Metric,
          patches: list[Patch], shape: tuple, **options) -> Tensor:
    values = patch_activations(model, corrupted_tokens, clean_cache, patches, metric, **options)
    return values.reshape(*shape, *values.shape[1:])


def _onehot(n: int, i: int, device) -> Bool[Tensor, "1 pos"]:
    return (torch.arange(n, device=device) == i)[None]


def _layer_pos(act: str, model: HookedTransformer, corrupted_tokens: Tensor, clean_cache: Source,
               metric: Metric, **options) -> Float[Tensor, "layer pos"]:
    n_pos, dev = corrupted_tokens.shape[-1], corrupted_tokens.device
    patches = [Patch(f"blocks.{layer}.{act}", _onehot(n_pos, pos, dev))
               for layer in range(model.cfg.n_layers) for pos in range(n_pos)]
    return _grid(model, corrupted_tokens, clean_cache, metric, patches, (model.cfg.n_layers, n_pos), **options)


def get_act_patch_resid_pre(model: HookedTransformer, corrupted_tokens: Int[Tensor, "batch pos"],
                            clean_cache: Source, patching_metric: Metric, **options) -> Float[Tensor, "layer pos"]:
    """Patch the residual stream at the start of each block, by position: ``[n_layers, pos]``.

    Same arguments and values as ``transformer_lens.patching.get_act_patch_resid_pre``;
    ``**options`` go to :func:`patch_activations` (``fast``, ``max_rows``, ...).
    """
    return _layer_pos("hook_resid_pre", model, corrupted_tokens, clean_cache, patching_metric, **options)


def get_act_patch_attn_out(model: HookedTransformer, corrupted_tokens: Int[Tensor, "batch pos"],
                           clean_cache: Source, patching_metric: Metric, **options) -> Float[Tensor, "layer pos"]:
    """Patch each attention layer's output, by position: ``[n_layers, pos]`` (as ``transformer_lens``)."""
    return _layer_pos("hook_attn_out", model, corrupted_tokens, clean_cache, patching_metric, **options)


def get_act_patch_mlp_out(model: HookedTransformer, corrupted_tokens: Int[Tensor, "batch pos"],
                          clean_cache: Source, patching_metric: Metric, **options) -> Float[Tensor, "layer pos"]:
    """Patch each MLP layer's output, by position: ``[n_layers, pos]`` (as ``transformer_lens``)."""
    return _layer_pos("hook_mlp_out", model, corrupted_tokens, clean_cache, patching_metric, **options)


def get_act_patch_attn_head_out_by_pos(model: HookedTransformer, corrupted_tokens: Int[Tensor, "batch pos"],
                                       clean_cache: Source, patching_metric: Metric,
                                       **options) -> Float[Tensor, "layer pos head"]:
    """Patch each head's output ``z``, by position: ``[n_layers, pos, n_heads]`` (as ``transformer_lens``)."""
    n_pos, dev, c = corrupted_tokens.shape[-1], corrupted_tokens.device, model.cfg
    patches = [Patch(f"blocks.{layer}.attn.hook_z", _onehot(n_pos, pos, dev), head=h)
               for layer in range(c.n_layers) for pos in range(n_pos) for h in range(c.n_heads)]
    return _grid(model, corrupted_tokens, clean_cache, patching_metric, patches, (c.n_layers, n_pos, c.n_heads),
                 **options)


def get_act_patch_attn_head_pattern_dest_src_pos(model: HookedTransformer, corrupted_tokens: Int[Tensor, "batch pos"],
                                                 clean_cache: Source, patching_metric: Metric,
                                                 **options) -> Float[Tensor, "layer head dest_pos src_pos"]:
    """Patch each (destination, source) attention-pattern entry of each head: ``[n_layers, n_heads, pos, pos]``."""
    n_pos, dev, c = corrupted_tokens.shape[-1], corrupted_tokens.device, model.cfg
    patches = [Patch(f"blocks.{layer}.attn.hook_pattern", _onehot(n_pos, d, dev), head=h, src=_onehot(n_pos, s, dev))
               for layer in range(c.n_layers) for h in range(c.n_heads) for d in range(n_pos) for s in range(n_pos)]
    return _grid(model, corrupted_tokens, clean_cache, patching_metric, patches, (c.n_layers, c.n_heads, n_pos, n_pos),
                 **options)


# ============================================================== roles
def role_masks(layout: Layout, n_pos: int, roles: Sequence[str] | None = None) -> dict[str, Bool[Tensor, "batch pos"]]:
    """Per-example position masks of prompt roles.

    Names: ``subjects``, ``answers``, ``context`` (all pairs), ``pair_i``,
    ``subject_i``, ``answer_i`` (1-based), ``query``, ``bos``, ``all``.
    Default: subjects, answers, context, every pair, query, and BOS when present.
    """
    k = layout.subject_pos.shape[1]
    if roles is None:
        has_bos = bool((layout.bos_pos >= 0).any())
        roles = ["subjects", "answers", "context", *(f"pair_{i + 1}" for i in range(k)), "query",
                 *(["bos"] if has_bos else [])]
    return {name: _role_mask(layout, n_pos, name) for name in roles}


def _role_mask(layout: Layout, n_pos: int, name: str) -> Bool[Tensor, "batch pos"]:
    mask = torch.zeros(layout.query_pos.shape[0], n_pos, dtype=torch.bool, device=layout.query_pos.device)
    role, _, index = name.partition("_")
    if index and not index.isdigit():
        raise ValueError(f"unknown role {name!r}")
    pick = slice(None) if not index else slice(int(index) - 1, int(index))
    groups = {"subjects": [layout.subject_pos], "answers": [layout.answer_pos],
              "subject": [layout.subject_pos[:, pick]], "answer": [layout.answer_pos[:, pick]],
              "pair": [layout.subject_pos[:, pick], layout.answer_pos[:, pick]],
              "context": [layout.subject_pos, layout.answer_pos], "query": [layout.query_pos[:, None]],
              "bos": [layout.bos_pos[:, None]], "all": []}
    if role not in groups or (index and role not in ("subject", "answer", "pair")):
        raise ValueError(f"unknown role {name!r}")
    if role == "all":
        return ~mask
    for pos in groups[role]:
        if pos.shape[1] == 0:
            raise ValueError(f"role {name!r} is out of range for k={layout.subject_pos.shape[1]}")
        valid = pos >= 0
        mask.scatter_(1, pos.clamp(min=0), valid)
    return mask


def default_role_hooks(model: HookedTransformer) -> list[str]:
    """resid_pre, per-head z, attn_out and mlp_out of every layer, plus the memory's stage hooks if present."""
    hooks = []
    for layer in range(model.cfg.n_layers):
        hooks += [f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_attn_out"]
        hooks += [] if model.cfg.attn_only else [f"blocks.{layer}.hook_mlp_out"]
    last = model.cfg.n_layers - 1
    return hooks + [n for n in (f"blocks.{last}.mlp.{h}" for h in MEMORY_HOOKS) if n in model.hook_dict]


def _components(model: HookedTransformer, hooks: Sequence[str]) -> list[tuple[str, str, int | None]]:
    """(label, hook, head) rows: per-head and pattern hooks expand into one row per head."""
    out = []
    for hook in hooks:
        if hook not in model.hook_dict:
            raise ValueError(f"unknown hook name {hook!r}")
        if _kind(hook) == "pos":
            out.append((hook, hook, None))
        else:
            out += [(f"{hook}:h{h}", hook, h) for h in range(model.cfg.n_heads)]
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

    def __getitem__(self, key: tuple[str, str]) -> float:
        component, role = key
        return float(self.values[self.components.index(component), self.roles.index(role)])

    def to_dict(self) -> dict:
        return dict(components=list(self.components), roles=list(self.roles), values=self.values.tolist(),
                    raw=self.raw.tolist(), clean_value=self.clean_value, corrupted_value=self.corrupted_value,
                    mode=self.mode, method=self.method)

    def __str__(self) -> str:
        width = max(len(c) for c in self.components) if self.components else 10
        cols = [max(7, len(r)) for r in self.roles]
        head = f"{self.method} patching ({self.mode}); normalised metric: 0 = corrupted " \
               f"({self.corrupted_value:.3f}), 1 = clean ({self.clean_value:.3f})"
        lines = [head, " " * width + "  " + "  ".join(r.rjust(w) for r, w in zip(self.roles, cols))]
        for c, row in zip(self.components, self.values.tolist()):
            lines.append(c.ljust(width) + "  " + "  ".join(f"{v:{w}.3f}" for v, w in zip(row, cols)))
        return "\n".join(lines)


def _role_setup(model: HookedTransformer, clean: Batch, corrupted: Batch, metric: Metric | None,
                hooks: Sequence[str], noising: bool):
    """Clean and corrupted runs (cached at ``hooks``), the metric and its baselines."""
    if clean.tokens.shape != corrupted.tokens.shape:
        raise ValueError("clean and corrupted batches must have the same shape")
    dev = model.cfg.device
    clean, corrupted = clean.to(dev), corrupted.to(dev)
    hooks = [h for h in hooks if h in model.hook_dict]  # unknown names are reported by _components
    clean_run, corr_run = base_run(model, clean.tokens, hooks), base_run(model, corrupted.tokens, hooks)
    if metric is None:
        metric = LogitDiff(clean.answers, corrupted.answers, clean.layout.query_pos)
    m_clean, m_corr = float(metric(clean_run.logits)), float(metric(corr_run.logits))
    base, runs = (clean, (clean_run, corr_run)) if noising else (corrupted, (corr_run, clean_run))
    return base, runs[0], runs[1].cache, metric, m_clean, m_corr


def _role_patch(hook: str, head: int | None, mask: Tensor, query: Tensor) -> Patch:
    if _kind(hook) == "pattern":
        return Patch(hook, query, head=head, src=mask)
    return Patch(hook, mask, head=head)


def _result(components: list, roles: list, raw: Tensor, m_clean: float, m_corr: float, noising: bool,
            method: str) -> RolePatchResult:
    raw = einops.rearrange(raw.flatten(), "(component role) -> component role", role=len(roles)).detach().cpu().float()
    scale = m_clean - m_corr
    if abs(scale) < 1e-3 * (1.0 + abs(m_clean) + abs(m_corr)):
        warnings.warn(f"clean ({m_clean:.4g}) and corrupted ({m_corr:.4g}) runs score almost the same: "
                      "normalised patching values are unreliable", RuntimeWarning, stacklevel=3)
    values = (raw - m_corr) / (scale if scale != 0 else math.nan)
    return RolePatchResult([c[0] for c in components], list(roles), values, raw, m_clean, m_corr,
                           "noise" if noising else "denoise", method)


def patch_by_role(model: HookedTransformer, clean: Batch, corrupted: Batch, metric: Metric | None = None,
                  hooks: Sequence[str] | None = None, roles: Sequence[str] | dict | None = None, *,
                  noising: bool = False, **options) -> RolePatchResult:
    """Exact activation patching by hook x prompt role, positions taken per example from the layout.

    Args:
        model: the model.
        clean, corrupted: matched batches (e.g. ``task.corrupt(clean, kind)``).
        metric: callable on logits (default: logit difference clean vs corrupted answer at the query).
        hooks: hook names (default :func:`default_role_hooks`); per-head hooks give one row per head;
            ``hook_pattern`` rows patch the query row's entries from the role's positions.
        roles: role names (see :func:`role_masks`) or a dict name -> ``[batch pos]`` mask.
        noising: patch corrupted activations into the clean run instead of clean into corrupted.
        **options: passed to :func:`patch_activations`.

    Returns:
        A :class:`RolePatchResult` (normalised: 0 = corrupted, 1 = clean).
    """
    hooks = list(hooks or default_role_hooks(model))
    components = _components(model, hooks)
    base, run, source_cache, metric, m_clean, m_corr = _role_setup(model, clean, corrupted, metric, hooks, noising)
    masks = roles if isinstance(roles, dict) else role_masks(base.layout, base.tokens.shape[1], roles)
    query = _role_mask(base.layout, base.tokens.shape[1], "query")
    patches = [_role_patch(hook, head, m.to(query.device), query)
               for _, hook, head in components for m in masks.values()]
    raw = patch_activations(model, base.tokens, source_cache, patches, metric, base_run=run, **options)
    return _result(components, list(masks), raw, m_clean, m_corr, noising, "exact")


def patch_pattern_by_role(model: HookedTransformer, clean: Batch, corrupted: Batch, metric: Metric | None = None,
                          roles: Sequence[str] | dict | None = None, layers: Sequence[int] | None = None, *,
                          noising: bool = False, **options) -> RolePatchResult:
    """Patch the query row of each head's attention pattern, entries grouped by source role.

    Rows are ``blocks.L.attn.hook_pattern:h<i>``, columns source roles; see :func:`patch_by_role`.
    """
    layers = range(model.cfg.n_layers) if layers is None else layers
    hooks = [f"blocks.{layer}.attn.hook_pattern" for layer in layers]
    return patch_by_role(model, clean, corrupted, metric, hooks, roles, noising=noising, **options)


# ============================================================== attribution
def attribution_patch(model: HookedTransformer, clean: Batch, corrupted: Batch, metric: Metric | None = None,
                      hooks: Sequence[str] | None = None, roles: Sequence[str] | dict | None = None, *,
                      noising: bool = False) -> RolePatchResult:
    """Attribution patching: ``grad(metric at the base run) . (source - base activation)`` per hook x role.

    The first-order Taylor estimate of every patch of :func:`patch_by_role` from
    one forward and one backward pass: entries are summed over ``d_model`` (or
    ``d_head``, per head) and over the role's positions in every example.  The
    metric must be differentiable and return a scalar.

    Returns:
        A :class:`RolePatchResult` with ``method="attribution"``; ``raw`` is the
        base metric plus the estimated change.
    """
    hooks = list(hooks or default_role_hooks(model))
    components = _components(model, hooks)
    base, _, source_cache, metric, m_clean, m_corr = _role_setup(model, clean, corrupted, metric, hooks, noising)
    masks = roles if isinstance(roles, dict) else role_masks(base.layout, base.tokens.shape[1], roles)
    query = _role_mask(base.layout, base.tokens.shape[1], "query")
    acts, grads = _gradients(model, base.tokens, sorted(set(hooks)), metric)
    rows = []
    for _, hook, head in components:
        attr = (grads[hook] * (source_cache[hook].to(acts[hook].device) - acts[hook]))
        attr = _reduce_to_index(hook, attr)
        rows.append(torch.stack([_sum_entries(hook, attr, head, m.to(attr.device), query) for m in masks.values()]))
    m_base = m_corr if not noising else m_clean
    raw = m_base + torch.stack(rows) if rows else torch.zeros(0)
    return _result(components, list(masks), raw, m_clean, m_corr, noising, "attribution")


def _gradients(model: HookedTransformer, tokens: Tensor, hooks: Sequence[str], metric: Metric) -> tuple[dict, dict]:
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
    keep = 1 + _INDEX_DIMS[_kind(hook)]
    return attr.flatten(keep).sum(-1) if attr.ndim > keep else attr


def _sum_entries(hook: str, attr: Tensor, head: int | None, mask: Tensor, query: Tensor) -> Float[Tensor, ""]:
    """Sum of attributions over the entries a role patch would replace (all examples)."""
    kind = _kind(hook)
    if kind == "pos":
        return (attr * mask).sum()
    if kind == "head":
        return (attr[:, :, head] * mask).sum()
    return (attr[:, head] * (query[:, :, None] & mask[:, None, :])).sum()


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation of two tensors' entries (NaNs dropped)."""
    x, y = x.flatten().double(), y.flatten().double()
    ok = ~(x.isnan() | y.isnan())
    x, y = x[ok] - x[ok].mean(), y[ok] - y[ok].mean()
    return float((x * y).sum() / (x.norm() * y.norm()))
