"""The patching engine: a list of patches in, one metric value per patch out, each by its cheapest exact strategy.

Patched copies of the base run are stacked along the batch, and only samples (one example under one patch)
whose patched entries differ from the base run are recomputed, by the first strategy of :data:`STRATEGIES`
that applies to the patched hook:

=============  ================================================================================================
``fast``       the one-layer shortcut (:mod:`~icr_interp.analysis.causal.patching.fast`): only the rows a patch changes
               through the MLP, in one-layer models without normalisation
``suffix``     the suffix recomputation (:mod:`~icr_interp.analysis.causal.patching.suffix`): blocks from the patched
               layer on, positions from the first changed one on, the base run's keys and values before it
``general``    a hooked forward of the stacked copies (``run_with_hooks``): any hook of any model
=============  ================================================================================================

All three give what one hooked forward per patch gives (tests compare each with ``general`` within 1e-5).
A metric that declares the one position per example it reads (:func:`~icr_interp.analysis.causal.patching.metrics
.read_positions`; :class:`LogitDiff` does) gets only those rows recomputed and unembedded; other metrics see
the patched logits in full (base logits with the changed rows replaced), so any metric is exact.  Patches of
several hooks in one chunk are stacked into one batch.  No hook outlives a call.
"""

from dataclasses import dataclass
from collections.abc import Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icr_interp.analysis.causal.patching import fast as F
from icr_interp.analysis.causal.patching import suffix as S
from icr_interp.analysis.causal.patching.core import (DEFAULT_MAX_LOGITS_BYTES, DEFAULT_MAX_ROWS, Patch, Run, Source, chunks,
                                               differs, entry_masks, kind, where_hook)
from icr_interp.analysis.causal.patching.metrics import Metric, read_positions
from icr_interp.model.forward import query_path_applies
from icr_interp.task.tokens import check_model_tokens
from icr_interp.tl.compat import TLModel, is_bridge

STRATEGIES = ("fast", "suffix", "general")  # cheapest first; each patch takes the first that applies
BRIDGE_FALLBACK = ("TransformerBridge: every patch ran as a general hooked forward (the fast and suffix "
                   "strategies run HookedTransformer blocks directly); exact, but slower")


@dataclass(frozen=True)
class BaseRun:
    """A cached run of the base (corrupted) prompts, reusable across patching calls on them."""

    tokens: Int[Tensor, "batch pos"]  # the prompts
    logits: Float[Tensor, "batch pos vocab"]  # their logits
    cache: dict  # activations by hook name


def strategy_for(model: TLModel, hook: str, allowed: Sequence[str] = STRATEGIES) -> str:
    """The cheapest exact strategy of ``allowed`` for a patch of ``hook`` (``general`` always applies).

    On TransformerLens 4.x's ``TransformerBridge`` the blocks are a transformers model's, which only hooks reach
    into: the fast and suffix strategies run blocks themselves, so every patch falls back to ``general``
    (:data:`BRIDGE_FALLBACK`, stated in every role-patching result).
    """
    if is_bridge(model):
        return "general"
    if "fast" in allowed and query_path_applies(model) and F.fast_class(hook, model) is not None:
        return "fast"
    if "suffix" in allowed and S.applies(model, hook):
        return "suffix"
    return "general"


def allowed_strategies(strategy: str | None, fast: bool | None) -> tuple[str, ...]:
    if strategy is None or strategy == "auto":
        return tuple(s for s in STRATEGIES if not (s == "fast" and fast is False))
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {('auto', *STRATEGIES)}, got {strategy!r}")
    return (strategy, "general")


def needed_hooks(model: TLModel, hooks: Sequence[str], allowed: Sequence[str] = STRATEGIES) -> set[str]:
    """Every activation the base run must cache for patches of ``hooks`` (by the strategies ``allowed``)."""
    chosen = {strategy_for(model, h, allowed) for h in hooks}
    names = set(hooks)
    if "fast" in chosen:
        names |= F.base_hooks(model, hooks, True)
    if "suffix" in chosen:
        names |= S.base_hooks(model, [h for h in hooks if strategy_for(model, h, allowed) == "suffix"])
    return names


@torch.no_grad()
def base_run(model: TLModel, tokens: Int[Tensor, "batch pos"], hooks: Sequence[str] | None = None) -> BaseRun:
    """Run ``tokens`` once and cache what patching ``hooks`` needs (every hook when ``hooks`` is None).

    Pass the result as ``base_run=`` to :func:`patch_activations` or any drop-in
    to share one base forward pass between several patching calls.
    """
    tokens = check_model_tokens(model, tokens).to(model.cfg.device)
    names = None if hooks is None else set(hooks) | F.base_hooks(model, hooks, query_path_applies(model)) | (
        S.base_hooks(model, hooks) if S.supports(model) else set())  # enough for every strategy
    logits, cache = model.run_with_cache(tokens, names_filter=None if names is None else (lambda n: n in names))
    return BaseRun(tokens, logits, dict(cache.cache_dict))


def _checked_base(model: TLModel, tokens: Tensor, hooks: Sequence[str], allowed: Sequence[str],
                  given: BaseRun | None) -> BaseRun:
    if given is None:
        names = needed_hooks(model, hooks, allowed)
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        return BaseRun(tokens, logits, dict(cache.cache_dict))
    if given.tokens.shape != tokens.shape or not torch.equal(given.tokens.to(tokens.device), tokens):
        raise ValueError("base_run was computed on other tokens than the ones patched")
    missing = sorted(needed_hooks(model, hooks, allowed) - set(given.cache))
    if missing:
        raise ValueError(f"base_run lacks activations {missing}; build it with base_run(model, tokens)")
    return given


@torch.no_grad()
def patch_activations(model: TLModel, tokens: Int[Tensor, "batch pos"], source_cache: Source,
                      patches: Sequence[Patch], metric: Metric, *, strategy: str | None = None,
                      fast: bool | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                      max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
                      base_run: BaseRun | None = None) -> Float[Tensor, "patch ..."]:
    """Run ``tokens`` once per patch with the patched entries taken from ``source_cache``; metric per patch.

    Args:
        model: any ``HookedTransformer``.
        tokens: the base run's tokens (corrupted ones for denoising).
        source_cache: activations of the source run (clean for denoising; any replacement values, for
            ablations) for every patched hook.
        patches: what to patch, one metric value each.
        metric: callable from the full patched logits ``[batch pos vocab]`` to a scalar (or tensor); one that
            declares its read positions (:func:`~icr_interp.analysis.causal.patching.metrics.read_positions`) gets
            only those rows recomputed.
        strategy: ``None``/``"auto"`` (each patch by the cheapest exact strategy), or ``"fast"``,
            ``"suffix"``, ``"general"`` to force one (where it does not apply, ``general`` runs).
        fast: False excludes the one-layer shortcut (first release's switch).
        max_rows: rows per recomputation chunk (memory bound).
        max_logits_bytes: bytes of patched logits held at once.
        base_run: the base run of ``tokens`` from :func:`base_run` (default: run it here).

    Returns:
        ``[patch, *metric_shape]``: what one hooked forward per patch would give.
    """
    allowed = allowed_strategies(strategy, fast)
    tokens = check_model_tokens(model, tokens).to(model.cfg.device)
    unknown = sorted({p.hook for p in patches} - set(model.hook_dict))
    if unknown:
        raise ValueError(f"unknown hook names {unknown}")
    hooks = list(dict.fromkeys(p.hook for p in patches))
    base = _checked_base(model, tokens, hooks, allowed, base_run)
    batch, n_pos = tokens.shape
    read = read_positions(metric, n_pos)
    read = None if read is None else read.to(tokens.device)
    run = Run(model, tokens, base.logits, base.cache, source_cache, "fast" in allowed, max_rows, read)
    base_value = torch.as_tensor(metric(base.logits))
    per_example = 1 if read is not None else n_pos
    row_bytes = base.logits.shape[-1] * base.logits.element_size()
    per_chunk = max(1, max_logits_bytes // max(1, batch * per_example * row_bytes))
    chosen = {h: strategy_for(model, h, allowed) for h in hooks}
    values: list = []
    for sl in chunks(len(patches), per_chunk):
        values += _patch_chunk(run, patches[sl], metric, base_value, read, chosen)
    out = torch.stack([torch.as_tensor(v, device=base.logits.device) for v in values]) if values \
        else base.logits.new_zeros(0)
    return out.to(device=model.cfg.device, dtype=torch.get_default_dtype())


def samples(run: Run, chunk: Sequence[Patch], read: Tensor | None) -> list[tuple[Tensor, S.Group]]:
    """Per hook of ``chunk``: (patch index of each sample, its :class:`suffix.Group`) for the samples that change
    what the metric reads (a change after an example's read position cannot reach it: attention is causal)."""
    batch, n_pos = run.tokens.shape
    causal = run.model.cfg.attention_dir == "causal"
    out = []
    for hook in dict.fromkeys(p.hook for p in chunk):
        idx = torch.tensor([i for i, p in enumerate(chunk) if p.hook == hook], device=run.tokens.device)
        source, base = run.src(hook), run.base[hook]
        k = kind(hook)
        n_heads = source.shape[1] if k == "pattern" else source.shape[2] if k == "head" else 1
        entries = entry_masks([chunk[i] for i in idx.tolist()], batch, n_pos, n_heads, run.tokens.device)
        changed_entries = entries & differs(k, source, base)[None]
        changed = changed_entries.flatten(2).any(-1)  # [patch batch]
        si, sb = changed.nonzero(as_tuple=True)
        first = S.first_changed(hook, changed_entries[si, sb])
        if read is not None and causal:
            live = first <= read[sb]
            si, sb, first = si[live], sb[live], first[live]
        out.append((idx[si], S.Group(hook, entries[si, sb], sb, first)))
    return out


def _patch_chunk(run: Run, chunk: Sequence[Patch], metric: Metric, base_value: Tensor, read: Tensor | None,
                 chosen: dict) -> list:
    """Metric values of one chunk of patches (any hooks), their changed samples recomputed together."""
    groups = samples(run, chunk, read)
    patch_of = torch.cat([g[0] for g in groups]) if groups else torch.zeros(0, dtype=torch.long)
    example = torch.cat([g[1].example for g in groups]) if groups else patch_of
    if len(patch_of) == 0:
        return [base_value] * len(chunk)
    triples, offset, suffix_groups, suffix_offsets = [], 0, [], []
    for _, g in groups:
        strategy = chosen[g.hook]
        if strategy == "suffix":
            suffix_groups.append(g)
            suffix_offsets.append(offset)
        else:
            cls = F.fast_class(g.hook, run.model) if strategy == "fast" else None
            gen = _general(run, g.hook, g.entry, g.example) if cls is None else \
                F.RECOMPUTE[cls](run, g.hook, g.entry, g.example)
            triples += [_keep_read(s + offset, p, rows, g.example[s], read) for s, p, rows in gen]
        offset += len(g.example)
    if suffix_groups:
        renumber = torch.cat([torch.arange(len(g.example), device=patch_of.device) + o
                              for g, o in zip(suffix_groups, suffix_offsets)])
        triples += [(renumber[s], p, rows) for s, p, rows in S.recompute(run, suffix_groups, read)]
    s_idx, pos, rows = (torch.cat(t) for t in zip(*triples))
    return _assemble(run, len(chunk), patch_of[s_idx], example[s_idx], pos, rows, metric, base_value, read)


def _keep_read(s: Tensor, p: Tensor, rows: Tensor, example: Tensor, read: Tensor | None) -> tuple:
    """The triples at the read positions only (all of them when the metric declares none)."""
    if read is None:
        return s, p, rows
    keep = p == read[example]
    return s[keep], p[keep], rows[keep]


def _assemble(run: Run, n_patches: int, patch_of: Tensor, b_rows: Tensor, p_rows: Tensor, rows: Tensor,
              metric: Metric, base_value: Tensor, read: Tensor | None) -> list:
    """Each patch's metric: the base logits (or read rows) with its recomputed rows replaced."""
    order = torch.argsort(patch_of, stable=True)
    counts = torch.bincount(patch_of, minlength=n_patches).tolist()  # one sync per chunk
    b_rows, p_rows, rows = b_rows[order], p_rows[order], rows[order]
    if read is not None:
        base_rows = run.logits[torch.arange(run.tokens.shape[0], device=read.device), read]
        buf = torch.empty_like(base_rows)
    else:
        buf = torch.empty_like(run.logits)
    values, start = [], 0
    for n in counts:
        if n == 0:
            values.append(base_value)
            continue
        sl, start = slice(start, start + n), start + n
        if read is not None:
            buf.copy_(base_rows)
            buf[b_rows[sl]] = rows[sl].to(buf.dtype)
            values.append(_own(metric.on_rows(buf), buf))
        else:
            buf.copy_(run.logits)
            buf[b_rows[sl], p_rows[sl]] = rows[sl].to(buf.dtype)
            values.append(_own(metric(buf), buf))
    return values


def _own(value, buf: Tensor):
    """The metric's value, copied if it is a view of the reused logits buffer."""
    if isinstance(value, Tensor) and value.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr():
        return value.clone()
    return value


def _general(run: Run, hook: str, entry: Tensor, rows: Tensor):
    """Any model: patched copies stacked along the batch, one hooked forward per chunk."""
    n_pos = run.tokens.shape[1]
    source = run.src(hook)
    for sl in chunks(len(rows), run.max_rows // n_pos):
        patch = where_hook(entry[sl], source[rows[sl]])
        logits = run.model.run_with_hooks(run.tokens[rows[sl]], fwd_hooks=[(hook, patch)])
        s = torch.arange(sl.start, sl.stop, device=rows.device)
        yield (einops.repeat(s, "s -> (s p)", p=n_pos), einops.repeat(torch.arange(n_pos, device=rows.device),
               "p -> (s p)", s=len(s)), einops.rearrange(logits, "s p v -> (s p) v"))
