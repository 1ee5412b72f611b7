"""The one-layer recomputation: patch one activation, recompute only the rows it changes.

In a one-layer attention + MLP model without normalisation (our IC-recall
models; :func:`icr_interp.model.forward.query_path_applies` is the one check) a
patch of ``attn_out``, a head's ``z``, a pattern entry or ``mlp_out`` at
position j changes only position j's residual, so only that row is pushed
through the MLP and the unembedding (:func:`icr_interp.model.forward.row_logits`);
a ``resid_pre`` patch at j changes keys and values, so positions >= j (all of
them, for bidirectional attention) are recomputed.  Hooks inside the MLP
(the memory's ``mlp.hook_*``) stay patchable: the MLP runs under ``model.hooks``.

Each ``recompute_*`` yields ``(sample index, position, logits row)`` triples
for the stacked samples ``rows`` (the example each sample patches).
"""

from collections.abc import Iterator, Sequence

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from icr_interp.model import hooks as H
from icr_interp.tl.compat import TLModel
from icr_interp.model.forward import query_path_applies, row_logits, unembed
from icr_interp.analysis.causal.patching.core import Run, chunks, patched_positions, where_hook



def fast_class(hook: str, model: TLModel) -> str | None:
    """Which part of the one-layer forward a hook sits in (None: use the general path); the site table's stage."""
    layer_site = H.split(hook)
    if layer_site is None or layer_site[0] != 0:
        return None
    stage = H.stage(hook)
    return None if stage in ("mlp", "post") and model.cfg.attn_only else stage


def base_hooks(model: TLModel, hooks: Sequence[str], fast: bool) -> set[str]:
    """Hooks the engine reads from the base run: the patched ones, plus the one-layer path's inputs."""
    names = set(hooks)
    if fast:
        names |= {H.hook(0, site) for site in ("resid_pre", "v", "z", "pattern")}
        names |= set() if model.cfg.attn_only else {H.hook(0, "resid_mid")}
        names |= {H.hook(0, "result")} if model.cfg.use_attn_result else set()
    return names


def mlp_logits(run: Run, resid_mid: Float[Tensor, "row d_model"], hook: str | None = None,
               hook_values: Tensor | None = None) -> Float[Tensor, "row vocab"]:
    """Logits of residual rows after the block's MLP, optionally patching a hook inside the MLP."""
    out = []
    for sl in chunks(len(resid_mid), run.max_rows):
        x = resid_mid[sl]
        fwd = [] if hook is None else [(hook, where_hook(torch.ones(len(x), 1, dtype=torch.bool, device=x.device),
                                                         hook_values[sl][:, None]))]
        with run.model.hooks(fwd_hooks=fwd):
            out.append(row_logits(run.model, x))
    return torch.cat(out)


def _read_only(run: Run, rows: Tensor, s: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """The (sample, position) pairs the metric reads (all of them when it declares no read positions)."""
    if run.read is None:
        return s, p
    keep = p == run.read[rows[s]]
    return s[keep], p[keep]


def recompute_attn_in(run: Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Patch at attention's input: rerun attention, then the MLP at positions >= the first patched one."""
    n_pos, block = run.tokens.shape[1], run.model.blocks[0]
    touched = patched_positions(hook, entry)
    first = (touched.long().cumsum(1) == 0).sum(1)  # first patched position per sample
    later = torch.arange(n_pos, device=rows.device)[None] >= first[:, None]
    if run.model.cfg.attention_dir != "causal":
        later = torch.ones_like(later)  # bidirectional: every position sees the patch
    if run.read is not None:  # the metric reads one row per example: only it goes through the MLP
        later = later & (torch.arange(n_pos, device=rows.device)[None] == run.read[rows][:, None])
    for sl in chunks(len(rows), run.max_rows // n_pos):
        x = run.base[H.hook(0, "resid_pre")][rows[sl]]
        fwd = [] if hook.endswith("hook_resid_pre") else [(hook, where_hook(entry[sl], run.src(hook)[rows[sl]]))]
        if not fwd:
            x = torch.where(entry[sl][..., None], run.src(hook)[rows[sl]], x)
        with run.model.hooks(fwd_hooks=fwd):
            attn_out = block.attn(query_input=x, key_input=x, value_input=x)
        s, p = later[sl].nonzero(as_tuple=True)
        yield s + sl.start, p, mlp_logits(run, x[s, p] + attn_out[s, p])


def recompute_attn_out(run: Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Patch at attention's output: recompute the patched destination rows only."""
    s_all, p_all = _read_only(run, rows, *patched_positions(hook, entry).nonzero(as_tuple=True))
    for sl in chunks(len(s_all), run.max_rows):
        s, p = s_all[sl], p_all[sl]
        b = rows[s]
        out = attn_out_rows(run, hook, entry, s, b, p)
        yield s, p, mlp_logits(run, run.base[H.hook(0, "resid_pre")][b, p] + out)


def attn_out_rows(run: Run, hook: str, entry: Tensor, s: Tensor, b: Tensor,
                  p: Tensor) -> Float[Tensor, "row d_model"]:
    """Attention output at (example b, position p) with the patch of sample s applied."""
    attn, leaf = run.model.blocks[0].attn, H.site_of(hook)
    if leaf == "attn_out":
        return run.src(hook)[b, p]
    if leaf == "pattern":
        em = entry[s, :, p, :]  # [row head src]
        pattern = torch.where(em, run.src(hook)[b, :, p, :], run.base[hook][b, :, p, :])
        v = run.base[H.hook(0, "v")][b]  # [row src head d_head]
        z = einops.einsum(pattern.to(v.dtype), v, "r h s, r s h e -> r h e")
    else:  # hook_z or hook_result: per-head rows
        hm = entry[s, p][..., None]  # [row head 1]
        z = torch.where(hm, run.src(hook)[b, p], run.base[hook][b, p])
        if leaf == "result":
            return einops.reduce(z, "r h d -> r d", "sum") + attn.b_O
    if run.model.cfg.use_attn_result:
        per_head = einops.einsum(z, attn.W_O, "r h e, h e d -> r h d")  # as TransformerLens: per head, then summed
        return einops.reduce(per_head, "r h d -> r d", "sum") + attn.b_O
    w = einops.rearrange(attn.W_O, "h e d -> d (h e)")
    return F.linear(einops.rearrange(z, "r h e -> r (h e)"), w, attn.b_O)


def recompute_mlp(run: Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Patch at the MLP's input or inside it: recompute the MLP at the patched positions."""
    s_all, p_all = _read_only(run, rows, *entry.nonzero(as_tuple=True))
    for sl in chunks(len(s_all), run.max_rows):
        s, p = s_all[sl], p_all[sl]
        b = rows[s]
        if H.site_of(hook) == "resid_mid":
            yield s, p, mlp_logits(run, run.src(hook)[b, p])
        else:
            yield s, p, mlp_logits(run, run.base[H.hook(0, "resid_mid")][b, p], hook, run.src(hook)[b, p])


def recompute_post(run: Run, hook: str, entry: Tensor, rows: Tensor) -> Iterator:
    """Patch after the MLP: only the unembedding of the patched rows."""
    s, p = _read_only(run, rows, *entry.nonzero(as_tuple=True))
    b = rows[s]
    post = run.src(hook)[b, p]
    if H.site_of(hook) == "mlp_out":
        post = run.base[H.hook(0, "resid_mid")][b, p] + post
    yield s, p, unembed(run.model, post)


RECOMPUTE = {"attn_in": recompute_attn_in, "attn_out": recompute_attn_out, "mlp": recompute_mlp,
             "post": recompute_post}  # fast_class -> its recomputation
