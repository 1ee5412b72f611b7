"""The suffix recomputation: a patch in block ``L`` from position ``p`` on reruns blocks ``L..`` on rows ``p..`` only.

A patch of any activation of block ``L`` whose first changed position is ``p`` changes nothing before block
``L`` and, attention being causal, nothing at positions ``< p``: there the residual stream, keys and values
are the base run's.  So each patched *sample* (one example under one patch) enters the stack at block ``L``
with the base run's residual rows ``p..`` and runs blocks ``L..`` on them; the base run's keys and values of
positions ``< p`` reach TransformerLens's own attention as a frozen past key-value cache entry, so rotary
embeddings, grouped-query attention, normalisation and every other architecture detail are TransformerLens's
code, not ours.  The patch itself is written by a hook during block ``L`` (``model.hooks``), whatever the hook:
the residual stream, a head's ``z``, an attention pattern, ``attn_out``, ``mlp_out``, an MLP neuron.

Samples of every hook of a chunk are stacked together: grouped by ``p``, sorted by layer, so the samples
running block ``l`` are a prefix of the stack.  When the metric reads one position per example
(:func:`icr_interp.analysis.causal.patching.metrics.read_positions`) rows after it are never computed and only it is
unembedded: a patch at the prediction position costs one row through the blocks from ``L`` on.

:func:`recompute` yields ``(sample index, position, logits row)`` triples, as every strategy does.
"""

from dataclasses import dataclass
from collections.abc import Iterator, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from icr_interp._moved import module_attr
from icr_interp.analysis.causal.patching.core import Run, kind, patched_positions
from icr_interp.model import hooks as H
from icr_interp.model.forward import unembed
from icr_interp.tl.compat import TLModel

DEFAULT_MAX_ROWS = 4096  # residual rows (samples x suffix positions) pushed through a block at once


def supports(model: TLModel) -> bool:
    """Whether the suffix recomputation is exact for ``model``: causal attention in every block, and a
    positional scheme that needs only the residual stream and the past keys and values."""
    c = model.cfg
    return c.positional_embedding_type != "shortformer" and c.attention_dir == "causal" \
        and all(hasattr(b, "attn") for b in model.blocks) and _takes_past_kv(model.blocks[0]) \
        and getattr(c, "clip_qkv", None) is None and not str(c.original_architecture).startswith("Olmo")
    # (OLMo's key norm and clip_qkv also act between hook_k and the cache; not handed over: general strategy)


def _takes_past_kv(block) -> bool:
    """Whether a block's forward takes the past key-value entry the suffix recomputation hands it
    (TransformerLens 3.x's blocks do; the 4.x mirror's and a TransformerBridge's do not: general strategy)."""
    import inspect

    return "past_kv_cache_entry" in inspect.signature(block.forward).parameters


def applies(model: TLModel, hook: str) -> bool:
    """Whether a patch of ``hook`` can be recomputed by suffix (a hook inside a block of a supported model)."""
    # a hook whose position axis is not the suffix window (rotary keys see the past too) takes the general strategy
    return H.split(hook) is not None and H.windowed(hook) and supports(model)


def base_hooks(model: TLModel, hooks: Sequence[str]) -> set[str]:
    """What the base run must cache: from the first patched layer on, each block's residual input, keys and
    values."""
    layers = [H.split(h)[0] for h in hooks if H.split(h) is not None]
    first = min(layers, default=model.cfg.n_layers)
    return {H.hook(layer, site) for layer in range(first, model.cfg.n_layers) for site in ("resid_pre", "k", "v")}


@dataclass(frozen=True)
class Group:
    """Samples of one hook: each patches ``entry`` of one example with the source run's values."""

    hook: str
    entry: Tensor  # [sample *index_dims] entries written
    example: Int[Tensor, " sample"]  # example each sample patches
    first: Int[Tensor, " sample"]  # first position whose value changes


def _cached_keys(attn, keys: Tensor) -> Tensor:
    """The keys as TransformerLens's key-value cache holds them: ``hook_k`` is recorded before the QK norm
    (Gemma 3), the cache after it (handing ``hook_k`` over unnormalised moved every patch on Gemma-3-270M)."""
    return attn._apply_qk_norm(keys, attn.k_norm) if attn.cfg.use_qk_norm else keys


def _kv_entry(past_keys: Tensor, past_values: Tensor):
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
    return TransformerLensKeyValueCacheEntry(past_keys, past_values, frozen=True)


def _window(k: str, x: Tensor, start: int, T: int) -> Tensor:
    """The part of a ``[sample ...]`` activation (or entry mask) that the suffix rows ``start..start+T`` see."""
    if k == "pattern":
        return x[:, :, start:start + T, :start + T]  # destinations in the window, sources up to its end
    return x[:, start:start + T]


def _writer(run: Run, group: Group, ids: Tensor, rows: slice, start: int, T: int):
    """A hook writing the samples ``ids`` of ``group`` (stack rows ``rows``) inside their block."""
    k = kind(group.hook)
    mask = _window(k, group.entry[ids], start, T)
    values = _window(k, run.src(group.hook)[group.example[ids]], start, T)

    def hook(act: Tensor, hook) -> Tensor:
        m = mask[(...,) + (None,) * (act.ndim - mask.ndim)]
        act = act.clone()
        act[rows] = torch.where(m, values.to(act.dtype), act[rows])
        return act
    return hook


def recompute(run: Run, groups: Sequence[Group], read_pos: Tensor | None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Patched logits of the samples of ``groups`` (numbered in order across groups) as
    ``(sample index, position, logits row)`` triples; only ``read_pos[example]`` when it is given."""
    model, n_pos = run.model, run.tokens.shape[1]
    dev = run.tokens.device
    group_of = torch.cat([torch.full((len(g.example),), i, device=dev) for i, g in enumerate(groups)])
    local = torch.cat([torch.arange(len(g.example), device=dev) for g in groups])
    layer = torch.tensor([H.split(g.hook)[0] for g in groups], device=dev)[group_of]
    example = torch.cat([g.example for g in groups])
    first = torch.cat([g.first for g in groups])
    last = torch.full_like(first, n_pos - 1) if read_pos is None else read_pos[example]
    order_key = layer * len(groups) + group_of  # layer first, one group's samples contiguous
    for start in first.unique().tolist():
        ids = (first == start).nonzero().flatten()
        ids = ids[torch.argsort(order_key[ids], stable=True)]
        T = int(last[ids].max()) - start + 1
        step = max(1, run.max_rows // T)
        for i in range(0, len(ids), step):
            chunk = ids[i:i + step]
            resid = _run_suffix(run, groups, chunk, group_of, local, layer, example, start, T)
            if read_pos is None:
                s = chunk.repeat_interleave(T)
                p = torch.arange(start, start + T, device=dev).repeat(len(chunk))
                yield s, p, unembed(model, resid.reshape(-1, resid.shape[-1]))
            else:
                at = last[chunk] - start
                yield chunk, last[chunk], unembed(model, resid[torch.arange(len(chunk), device=dev), at])


def _run_suffix(run: Run, groups: Sequence[Group], ids: Tensor, group_of: Tensor, local: Tensor, layer: Tensor,
                example: Tensor, start: int, T: int) -> Tensor:
    """Final residual rows ``[sample T d_model]`` (after ``ln_final``) of the samples ``ids`` (sorted by layer)."""
    model, base = run.model, run.base
    layers, ex = layer[ids].tolist(), example[ids]
    x = torch.empty(len(ids), T, model.cfg.d_model, device=run.tokens.device,
                    dtype=base[H.hook(layers[0], "resid_pre")].dtype)
    n = 0
    for block_layer in range(layers[0], model.cfg.n_layers):
        n_prev = n
        while n < len(ids) and layers[n] == block_layer:
            n += 1
        x[n_prev:n] = base[H.hook(block_layer, "resid_pre")][ex[n_prev:n], start:start + T]
        fwd = []
        for g in group_of[ids[n_prev:n]].unique_consecutive().tolist():
            rows = (group_of[ids[:n]] == g).nonzero().flatten()
            sl = slice(int(rows[0]), int(rows[-1]) + 1)
            fwd.append((groups[g].hook, _writer(run, groups[g], local[ids[sl]], sl, start, T)))
        block = model.blocks[block_layer]
        past_k = _cached_keys(block.attn, base[H.hook(block_layer, "k")][ex[:n], :start])
        past_v = base[H.hook(block_layer, "v")][ex[:n], :start]
        if fwd:  # model.hooks resets every hook point on exit: only where a patch is written
            with model.hooks(fwd_hooks=fwd):
                x[:n] = block(x[:n], past_kv_cache_entry=_kv_entry(past_k, past_v))
        else:
            x[:n] = block(x[:n], past_kv_cache_entry=_kv_entry(past_k, past_v))
    return model.ln_final(x) if hasattr(model, "ln_final") else x


def first_changed(hook: str, changed: Tensor) -> Int[Tensor, " sample"]:
    """First position (destination, for patterns) where a sample's written values differ from the base run."""
    touched = patched_positions(hook, changed)
    return (touched.long().cumsum(1) == 0).sum(1)


def __getattr__(name: str):
    return module_attr(__name__, name)  # the first release's suffix_patching names (icr_interp._moved)
