"""Exact per-head patching of deep models, recomputing only what a patch changes.

A patch of head ``h``'s output ``z`` in layer ``L`` at positions ``>= p`` changes nothing before block ``L``
and nothing at positions ``< p`` (attention is causal): there the residual stream, keys and values are the base
run's.  So each patched *sample* (one example under one patch) runs blocks ``L..`` on its rows ``p..`` only;
the base run's keys and values of positions ``< p`` reach TransformerLens's own attention as a frozen past
key-value cache entry, so rotary embeddings, grouped-query attention and every other architecture detail are
TransformerLens's code, not ours.  Samples are stacked along the batch (grouped by ``p``, sorted by ``L`` so
the samples running block ``l`` are a prefix of the stack), and every write goes through ``model.hooks``.

A patch late in the prompt and deep in the model costs a few rows through a few blocks instead of a whole
forward; a patch at the prediction position (the function-vector patch, role patching at the prediction)
costs one row.  On a 30-layer model that is what makes per-head grids affordable on a CPU
(``benchmarks/bench_real_lm_patching.py``).  The results equal hooked forwards (tests:
``tests/test_function_vectors.py``).

:func:`run_z_patches` is the engine (logits at chosen read positions, or per-sample suffix residuals);
:func:`get_act_patch_attn_head_out_by_pos` a drop-in for ``transformer_lens.patching``'s function of that name;
:func:`patch_heads` the role patching of every (layer, head) at one role, as a ``[layer head]`` grid.
"""

from dataclasses import dataclass
from collections.abc import Callable, Iterator

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icr_interp.model import hooks as H
from icr_interp.model.forward import unembed
from icr_interp.task.tokens import check_model_tokens
from icr_interp.tl.compat import TLModel

DEFAULT_MAX_ROWS = 4096  # residual rows (samples x suffix positions) pushed through a block at once
_UNSUPPORTED_POS = ("shortformer",)  # positional schemes that need more than the residual stream per block


def _kv_entry(past_keys: Tensor, past_values: Tensor):
    from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry
    return TransformerLensKeyValueCacheEntry(past_keys, past_values, frozen=True)


def supports(model: TLModel) -> bool:
    """Whether the suffix recomputation is exact for ``model`` (its blocks take a past key-value entry)."""
    c = model.cfg
    return c.positional_embedding_type not in _UNSUPPORTED_POS and not getattr(c, "use_attn_result", False) \
        and all(hasattr(b, "attn") for b in model.blocks)


def base_hooks(model: TLModel) -> list[str]:
    """What the base run must cache: each block's residual input, keys, values and head outputs."""
    return [H.hook(layer, site) for layer in range(model.cfg.n_layers) for site in ("resid_pre", "k", "v", "z")]


@torch.no_grad()
def cache_run(model: TLModel, tokens: Int[Tensor, "batch pos"]) -> tuple[Tensor, dict]:
    """Logits and the activations :func:`run_z_patches` reads (``base_hooks``)."""
    names = set(base_hooks(model))
    logits, cache = model.run_with_cache(tokens.to(model.cfg.device), names_filter=lambda n: n in names)
    return logits, dict(cache.cache_dict)


@dataclass(frozen=True)
class ZPatches:
    """Samples to run: each writes one head's ``z`` at some positions of one example.

    The written values are the source run's (``source[hook_z][example, pos, head]``) or, with ``values``,
    one vector per sample written at every patched position (a mean activation, a function vector).
    """

    example: Int[Tensor, " sample"]  # base example each sample patches
    layer: Int[Tensor, " sample"]  # block whose z is patched
    head: Int[Tensor, " sample"]  # head patched
    positions: Bool[Tensor, "sample pos"]  # positions whose z is written
    values: Float[Tensor, "sample d_head"] | None = None  # the value written (None: the source run's z)

    def __len__(self) -> int:
        return self.example.shape[0]


def _changes(p: ZPatches, base: dict, source: dict | None) -> Bool[Tensor, "sample pos"]:
    """Patched positions whose written value differs from the base run's (the others change nothing)."""
    out = torch.zeros_like(p.positions)
    for layer in p.layer.unique().tolist():
        s = (p.layer == layer).nonzero().flatten()
        z_base = base[H.hook(layer, "z")][p.example[s], :, p.head[s]]  # [s pos d_head]
        new = p.values[s][:, None] if p.values is not None else source[H.hook(layer, "z")][p.example[s], :, p.head[s]]
        out[s] = p.positions[s] & (new.to(z_base.device) != z_base).any(-1)
    return out


def _plan(p: ZPatches, changed: Tensor, stop: Tensor | None, n_pos: int, max_rows: int) -> Iterator[tuple]:
    """Chunks ``(sample ids sorted by layer, first position p, suffix length T)`` of samples that change."""
    first = torch.where(changed.any(1), changed.int().argmax(1), n_pos)
    last = torch.full_like(first, n_pos - 1) if stop is None else stop[p.example]
    live = (first < n_pos) & (first <= last)
    for start in first[live].unique().tolist():
        ids = ((first == start) & live).nonzero().flatten()
        ids = ids[torch.argsort(p.layer[ids], stable=True)]
        T = int(last[ids].max()) - start + 1
        step = max(1, max_rows // T)
        for i in range(0, len(ids), step):
            yield ids[i:i + step], start, T


def _z_writer(p: ZPatches, ids: Tensor, changed: Tensor, source: dict | None, layer: int, start: int, T: int,
              new: slice) -> Callable:
    """A hook writing the new samples' patched z (rows ``new`` of the running stack) in block ``layer``."""
    sub = ids[new]
    r, t = changed[sub, start:start + T].nonzero(as_tuple=True)
    heads, examples = p.head[sub][r], p.example[sub][r]
    vals = p.values[sub][r] if p.values is not None else source[H.hook(layer, "z")][examples, start + t, heads]

    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        act[new.start + r.to(act.device), t.to(act.device), heads.to(act.device)] = vals.to(act)
        return act
    return hook


def _suffixes(model: TLModel, p: ZPatches, base: dict, source: dict | None, stop: Tensor | None, n_pos: int,
              max_rows: int) -> Iterator[tuple[Tensor, int, Tensor]]:
    """``(sample ids, p, final residual [n T d_model])`` of every chunk of samples that change the run."""
    changed = _changes(p, base, source)
    for ids, start, T in _plan(p, changed, stop, n_pos, max_rows):
        layers, examples = p.layer[ids], p.example[ids]
        x = torch.empty(len(ids), T, model.cfg.d_model, device=model.cfg.device, dtype=base[H.hook(0, "resid_pre")].dtype)
        first = int(layers[0])
        for layer in range(first, model.cfg.n_layers):
            n_prev, n = int((layers < layer).sum()), int((layers <= layer).sum())
            new = slice(n_prev, n)
            x[new] = base[H.hook(layer, "resid_pre")][examples[new], start:start + T]
            past_k = base[H.hook(layer, "k")][examples[:n], :start]
            past_v = base[H.hook(layer, "v")][examples[:n], :start]
            fwd = [(H.hook(layer, "z"), _z_writer(p, ids, changed, source, layer, start, T, new))] if n > n_prev else []
            with model.hooks(fwd_hooks=fwd):
                x[:n] = model.blocks[layer](x[:n], past_kv_cache_entry=_kv_entry(past_k, past_v))
        yield ids, start, model.ln_final(x) if hasattr(model, "ln_final") else x


@torch.no_grad()
def run_z_patches(model: TLModel, base_logits: Float[Tensor, "batch pos vocab"], base: dict, patches: ZPatches, *,
                  source: dict | None = None, read_pos: Int[Tensor, " batch"],
                  max_rows: int = DEFAULT_MAX_ROWS) -> Float[Tensor, "sample vocab"]:
    """Logits of every sample at its example's read position (e.g. the prediction position).

    Args:
        model: a HookedTransformer (:func:`supports`).
        base_logits, base: the base run (:func:`cache_run`) of the prompts patched into.
        patches: the samples (:class:`ZPatches`).
        source: the source run's activations (its ``hook_z``), unless ``patches.values`` is given.
        read_pos: position read in each example; positions after it are never computed.
        max_rows: rows per block call (memory bound).

    Returns:
        ``[sample vocab]``: what a hooked forward of each sample would give at ``read_pos[example]``.
    """
    if not supports(model):
        raise ValueError("the suffix recomputation does not support this model's positional scheme")
    dev = model.cfg.device
    read_pos = read_pos.to(dev)
    patches = ZPatches(*(t.to(dev) if t is not None else None for t in (patches.example, patches.layer, patches.head,
                                                                           patches.positions, patches.values)))
    out = base_logits[patches.example, read_pos[patches.example]].clone()
    n_pos = base_logits.shape[1]
    for ids, start, resid in _suffixes(model, patches, base, source, read_pos, n_pos, max_rows):
        rows = resid[torch.arange(len(ids), device=dev), read_pos[patches.example[ids]] - start]
        out[ids] = unembed(model, rows).to(out.dtype)
    return out


@torch.no_grad()
def get_act_patch_attn_head_out_by_pos(model: TLModel, corrupted_tokens: Int[Tensor, "batch pos"], clean_cache,
                                       patching_metric: Callable, *, layers: list[int] | None = None,
                                       read_pos: Int[Tensor, " batch"] | None = None,
                                       max_rows: int = DEFAULT_MAX_ROWS) -> Float[Tensor, "layer pos head"]:
    """``transformer_lens.patching.get_act_patch_attn_head_out_by_pos`` by suffix recomputation.

    Same arguments and values (``clean_cache`` needs every layer's ``hook_z``): ``[n_layers, pos, n_heads]``,
    each cell the metric of the corrupted run with that head's ``z`` at that position from the clean run.
    The metric sees full logits (base rows where the patch changes nothing).  ``layers`` restricts the grid
    to some layers (the others are NaN).  ``read_pos`` promises that the metric reads each example's logits at
    that position only (a ``LogitDiff`` at the prediction position): then only rows up to it are recomputed
    and only it is unembedded, the other rows keep the base run's logits.
    """
    check_model_tokens(model, corrupted_tokens, "corrupted_tokens")
    c, dev = model.cfg, model.cfg.device
    tokens = corrupted_tokens.to(dev)
    batch, n_pos = tokens.shape
    logits, base = cache_run(model, tokens)
    layers = list(range(c.n_layers)) if layers is None else list(layers)
    grid = torch.tensor([(layer, pos, h) for layer in layers for pos in range(n_pos) for h in range(c.n_heads)],
                        device=dev).reshape(-1, 3)
    cells = len(grid)
    example = torch.arange(batch, device=dev).repeat(cells)
    cell = torch.arange(cells, device=dev).repeat_interleave(batch)
    positions = torch.arange(n_pos, device=dev)[None] == grid[cell, 1][:, None]
    patches = ZPatches(example, grid[cell, 0], grid[cell, 2], positions)
    out = torch.full((c.n_layers, n_pos, c.n_heads), float("nan"), device=dev)
    base_value = torch.as_tensor(patching_metric(logits), device=dev, dtype=out.dtype)
    done = torch.zeros(cells, dtype=torch.bool, device=dev)
    buf, held = logits.clone(), []  # held: (cell, examples, start, final residual rows) of the cell being read

    def flush():
        if not held:
            return
        one = held[0][0]
        for _, ex, start, resid in held:
            if read_pos is None:
                buf[ex, start:] = unembed(model, resid.reshape(-1, c.d_model)).reshape(len(ex), -1, buf.shape[-1]).to(buf)
            else:
                row = resid[torch.arange(len(ex), device=dev), read_pos[ex] - start]
                buf[ex, read_pos[ex]] = unembed(model, row).to(buf)
        layer, pos, h = grid[one].tolist()
        out[layer, pos, h] = torch.as_tensor(patching_metric(buf), device=dev)
        for _, ex, start, _ in held:
            buf[ex, start:] = logits[ex, start:]
        done[one] = True
        held.clear()

    source = dict(clean_cache.items()) if hasattr(clean_cache, "items") else clean_cache
    if read_pos is not None:
        read_pos = read_pos.to(dev)
    for ids, start, resid in _suffixes(model, patches, base, source, read_pos, n_pos, max_rows):
        cells_here = cell[ids]
        for one in cells_here.unique_consecutive().tolist():  # a cell's samples are consecutive (maybe split)
            if held and held[0][0] != one:
                flush()
            mine = (cells_here == one).nonzero().flatten()
            held.append((one, example[ids[mine]], start, resid[mine]))
    flush()
    for one in (~done).nonzero().flatten().tolist():  # patches that change nothing: the base run's metric
        layer, pos, h = grid[one].tolist()
        out[layer, pos, h] = base_value
    return out


@dataclass(frozen=True)
class HeadPatchResult:
    """Denoising patch of every head's ``z`` at one role's positions: ``[layer head]`` normalised logit difference."""

    values: Float[Tensor, "layer head"]  # 0 = corrupted run, 1 = clean run
    raw: Float[Tensor, "layer head"]  # mean logit difference (clean target - corrupted target) of each patch
    clean_value: float  # logit difference on the clean run
    corrupted_value: float  # ... and on the corrupted run
    reliable: bool  # the toolkit's rule (icr_interp.analysis.reliability): gap stands out, model above chance
    reason: str  # why not reliable ("" when reliable)

    def top(self, n: int = 10) -> list[tuple[int, int]]:
        """The ``n`` heads whose patch restores the most, largest first."""
        order = self.values.flatten().argsort(descending=True)[:n].tolist()
        return [(i // self.values.shape[1], i % self.values.shape[1]) for i in order]

    def to_dict(self) -> dict:
        return dict(values=self.values.tolist(), raw=self.raw.tolist(), clean_value=self.clean_value,
                    corrupted_value=self.corrupted_value, reliable=self.reliable, reason=self.reason,
                    top=[list(h) for h in self.top(10)])


@torch.no_grad()
def patch_heads(model: TLModel, clean, corrupted, positions: Bool[Tensor, "batch pos"] | None = None, *,
                n_answers: int | None = None, max_rows: int = DEFAULT_MAX_ROWS) -> HeadPatchResult:
    """Patch every head's clean ``z`` into the corrupted run at ``positions`` (default: each prediction position).

    Role patching by head (``patching.patch_by_role`` with one ``hook_z`` row per head) for deep models: the
    metric is the logit difference (clean target - corrupted target) at each example's prediction position,
    normalised so the corrupted run scores 0 and the clean one 1; reliability by the toolkit's rule.
    """
    from icr_interp.analysis.patching.by_role import assess
    from icr_interp.analysis.patching.metrics import LogitDiff

    check_model_tokens(model, corrupted.tokens, "corrupted.tokens")
    if clean.tokens.shape != corrupted.tokens.shape:
        raise ValueError("clean and corrupted batches must have the same shape")
    c, dev = model.cfg, model.cfg.device
    clean, corrupted = clean.to(dev), corrupted.to(dev)
    n, n_pos = corrupted.tokens.shape
    pred = corrupted.layout.pred_pos
    if positions is None:
        positions = torch.arange(n_pos, device=dev)[None] == pred[:, None]
    clean_logits, clean_cache = cache_run(model, clean.tokens)
    logits, base = cache_run(model, corrupted.tokens)
    metric = LogitDiff(clean.answers, corrupted.answers, pred)
    m_clean, m_corr = float(metric(clean_logits)), float(metric(logits))
    trust = assess(clean, corrupted, clean_logits, logits, metric, m_clean, m_corr, n_answers)
    layer = torch.arange(c.n_layers, device=dev).repeat_interleave(c.n_heads * n)
    head = torch.arange(c.n_heads, device=dev).repeat_interleave(n).repeat(c.n_layers)
    example = torch.arange(n, device=dev).repeat(c.n_layers * c.n_heads)
    patches = ZPatches(example, layer, head, positions.to(dev)[example])
    out = run_z_patches(model, logits, base, patches, source=clean_cache, read_pos=pred, max_rows=max_rows)
    rows = torch.arange(len(example), device=dev)
    diff = out[rows, clean.answers[example]] - out[rows, corrupted.answers[example]]
    raw = diff.reshape(c.n_layers, c.n_heads, n).mean(-1).cpu()
    gap = m_clean - m_corr
    values = (raw - m_corr) / gap if gap != 0 else torch.full_like(raw, float("nan"))
    return HeadPatchResult(values, raw, m_clean, m_corr, trust.reliable, trust.reason)
