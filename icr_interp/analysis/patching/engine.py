"""The patching engine: a list of patches in, one metric value per patch out, from batched forwards.

Patched copies of the base run are stacked along the batch.  Only samples
whose patched entries differ from the base run are recomputed: by the
one-layer shortcut (:mod:`icr_interp.analysis.patching.fast`) when it applies, or
otherwise by a hooked forward of the stacked copies (``run_with_hooks``).
The patched logits are assembled in full (base logits with the changed rows
replaced), so the result is exact for *any* metric, including ones that read
every position or average over the batch.  No hook outlives a call.
"""

from dataclasses import dataclass
from collections.abc import Iterator, Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icr_interp.model.forward import query_path_applies
from icr_interp.tl.compat import TLModel
from icr_interp.analysis.patching import fast as F
from icr_interp.analysis.patching.core import (DEFAULT_MAX_LOGITS_BYTES, DEFAULT_MAX_ROWS, Patch, Run, Source, chunks,
                                      differs, entry_masks, kind, where_hook)
from icr_interp.analysis.patching.metrics import Metric
from icr_interp.task.tokens import check_model_tokens


@dataclass(frozen=True)
class BaseRun:
    """A cached run of the base (corrupted) prompts, reusable across patching calls on them."""

    tokens: Int[Tensor, "batch pos"]  # the prompts
    logits: Float[Tensor, "batch pos vocab"]  # their logits
    cache: dict  # activations by hook name


@torch.no_grad()
def base_run(model: TLModel, tokens: Int[Tensor, "batch pos"], hooks: Sequence[str] | None = None) -> BaseRun:
    """Run ``tokens`` once and cache what patching needs (every hook when ``hooks`` is None).

    Pass the result as ``base_run=`` to :func:`patch_activations` or any drop-in
    to share one base forward pass between several patching calls.
    """
    tokens = check_model_tokens(model, tokens).to(model.cfg.device)
    names = None if hooks is None else F.base_hooks(model, hooks, query_path_applies(model))
    logits, cache = model.run_with_cache(tokens, names_filter=None if names is None else (lambda n: n in names))
    return BaseRun(tokens, logits, dict(cache.cache_dict))


def _checked_base(model: TLModel, tokens: Tensor, hooks: Sequence[str], fast: bool,
                  given: BaseRun | None) -> BaseRun:
    if given is None:
        return base_run(model, tokens, hooks)
    if given.tokens.shape != tokens.shape or not torch.equal(given.tokens.to(tokens.device), tokens):
        raise ValueError("base_run was computed on other tokens than the ones patched")
    missing = sorted(F.base_hooks(model, hooks, fast) - set(given.cache))
    if missing:
        raise ValueError(f"base_run lacks activations {missing}; build it with base_run(model, tokens)")
    return given


@torch.no_grad()
def patch_activations(model: TLModel, tokens: Int[Tensor, "batch pos"], source_cache: Source,
                      patches: Sequence[Patch], metric: Metric, *, fast: bool | None = None,
                      max_rows: int = DEFAULT_MAX_ROWS, max_logits_bytes: int = DEFAULT_MAX_LOGITS_BYTES,
                      base_run: BaseRun | None = None) -> Float[Tensor, "patch ..."]:
    """Run ``tokens`` once per patch with the patched entries taken from ``source_cache``; metric per patch.

    Args:
        model: any ``HookedTransformer``.
        tokens: the base run's tokens (corrupted ones for denoising).
        source_cache: activations of the source run (clean for denoising) for every patched hook.
        patches: what to patch, one metric value each.
        metric: callable from the full patched logits ``[batch pos vocab]`` to a scalar (or tensor).
        fast: use the one-layer recomputation shortcut (default: whenever :func:`icr_interp.model.forward.query_path_applies`).
        max_rows: rows per recomputation chunk (memory bound).
        max_logits_bytes: bytes of assembled patched logits held at once.
        base_run: the base run of ``tokens`` from :func:`base_run` (default: run it here).

    Returns:
        ``[patch, *metric_shape]``: exactly what one hooked forward per patch would give.
    """
    fast = query_path_applies(model) if fast is None else fast and query_path_applies(model)
    tokens = check_model_tokens(model, tokens).to(model.cfg.device)
    unknown = sorted({p.hook for p in patches} - set(model.hook_dict))
    if unknown:
        raise ValueError(f"unknown hook names {unknown}")
    base = _checked_base(model, tokens, [p.hook for p in patches], fast, base_run)
    logits = base.logits
    run = Run(model, tokens, logits, base.cache, source_cache, fast, max_rows)
    base_value = torch.as_tensor(metric(logits))
    values: list = [None] * len(patches)
    per_chunk = max(1, max_logits_bytes // max(1, logits.numel() * logits.element_size()))
    for hook in dict.fromkeys(p.hook for p in patches):
        idx = [i for i, p in enumerate(patches) if p.hook == hook]
        for sl in chunks(len(idx), per_chunk):
            chunk = [patches[i] for i in idx[sl]]
            for i, v in zip(idx[sl], _patch_chunk(run, hook, chunk, metric, base_value)):
                values[i] = v
    out = torch.stack([torch.as_tensor(v, device=logits.device) for v in values]) if values else logits.new_zeros(0)
    return out.to(device=model.cfg.device, dtype=torch.get_default_dtype())


def _patch_chunk(run: Run, hook: str, chunk: Sequence[Patch], metric: Metric, base_value: Tensor) -> list:
    """Metric values of one chunk of patches on the same hook."""
    batch, n_pos = run.tokens.shape
    source, base = run.src(hook), run.base[hook]
    k = kind(hook)
    n_heads = source.shape[1] if k == "pattern" else source.shape[2] if k == "head" else 1
    entries = entry_masks(chunk, batch, n_pos, n_heads, run.tokens.device)
    changed = (entries & differs(k, source, base)[None]).flatten(2).any(-1)  # [patch batch]
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


def _recompute(run: Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Patched logits of stacked samples, as (sample index, position, logits row) triples."""
    cls = F.fast_class(hook, run.model) if run.fast else None
    return _general(run, hook, entry, rows) if cls is None else F.RECOMPUTE[cls](run, hook, entry, rows)


def _general(run: Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Any model: patched copies stacked along the batch, one hooked forward per chunk."""
    n_pos = run.tokens.shape[1]
    source = run.src(hook)
    for sl in chunks(len(rows), run.max_rows // n_pos):
        patch = where_hook(entry[sl], source[rows[sl]])
        logits = run.model.run_with_hooks(run.tokens[rows[sl]], fwd_hooks=[(hook, patch)])
        s = torch.arange(sl.start, sl.stop, device=rows.device)
        yield (einops.repeat(s, "s -> (s p)", p=n_pos), einops.repeat(torch.arange(n_pos, device=rows.device),
               "p -> (s p)", s=len(s)), einops.rearrange(logits, "s p v -> (s p) v"))
