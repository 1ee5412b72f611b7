"""The patching grids of a real-model probe: the grid a researcher reads first, and a finer one behind a flag.

**Default grid** (:data:`DEFAULT_PARTS`), each part one role-patching call (clean into corrupted, logit
difference at the prediction position, 0 = corrupted, 1 = clean):

* ``resid``: the residual stream entering every layer (``resid_pre``) x every prompt role -- *where* the
  information that the corruption moves lives, layer by layer;
* ``prediction``: every layer's attention output and MLP output at the prediction position -- *which
  sublayers* write the answer;
* ``heads``: every head's ``z`` at the prediction position -- *which heads* move it there.

On a 30-layer model that is 30 x 10 + 60 + 270 cells per corruption, each recomputing only the blocks after
its layer and the positions from its patch on (the engine's job); :func:`grid_blocks` counts those
token-blocks, the floor a time estimate multiplies by the measured time per token-block.

**Full grid** (``--grid full``, :func:`screen_and_confirm`): every head's ``z`` x every role and every
head's query-row attention pattern x every source role -- thousands of cells, too many to patch exactly.
Attribution patching (one forward and one backward; AtP*, Kramar et al. 2024) *screens* every cell; exact
patching *confirms* the top ones and audits a random sample of the rest, and the result says how far the
screen can be trusted: the recall of the exact top-k, and the Spearman rank correlation of screened and exact
values (the engine's :func:`icr_interp.analysis.causal.patching.screen_and_confirm`).

:func:`per_prompt_cells` and :func:`restored_interval` give chosen cells per prompt and their effect with a
bootstrap interval over prompts (the case study's intervals).
"""

import math
import time
import warnings
import torch

from icr_interp.model import hooks as H

DEFAULT_PARTS = ("resid", "prediction", "heads")
PART_TITLES = dict(resid="residual stream (resid_pre) x role",
                   prediction="attention and MLP output at the prediction position",
                   heads="every head's z at the prediction position")


def part_grid(model, part: str) -> tuple[list[str], list[str] | None]:
    """``(hooks, roles)`` of one part of the default grid (roles None: every default role of the prompts)."""
    n = model.cfg.n_layers
    if part == "resid":
        return [H.hook(layer, "resid_pre") for layer in range(n)], None
    if part == "prediction":
        sites = ("attn_out",) if model.cfg.attn_only else ("attn_out", "mlp_out")
        return [H.hook(layer, site) for layer in range(n) for site in sites], ["prediction"]
    if part == "heads":
        return [H.hook(layer, "z") for layer in range(n)], ["prediction"]
    raise ValueError(f"unknown grid part {part!r}; parts: {', '.join(DEFAULT_PARTS)}")


def run_part(model, clean, corrupted, part: str, log=None, n_chunks: int = 6):
    """The :class:`~icr_interp.analysis.causal.patching.RolePatchResult` of one part of the default grid.

    What :func:`~icr_interp.analysis.causal.patching.patch_by_role` computes, with its two base runs made once and the
    cells patched in ``n_chunks`` engine calls, so that ``log`` (if given) gets a progress line after each.
    """
    from icr_interp.analysis.causal.patching import patch_activations
    from icr_interp.analysis.causal.patching.by_role import components, grid_masks, result, role_patch, setup

    hooks, roles = part_grid(model, part)
    start = time.perf_counter()
    with warnings.catch_warnings():  # the result carries its reliability and range notes; the probe prints them
        warnings.simplefilter("ignore", RuntimeWarning)
        rows = components(model, hooks)
        s = setup(model, clean, corrupted, None, hooks, False)
        masks, query = grid_masks(s, roles)
        patches = [role_patch(hook, head, m.to(query.device), query) for _, hook, head in rows for m in masks.values()]
        step = len(masks) * max(1, math.ceil(len(rows) / n_chunks))  # whole rows per chunk
        raw = []
        for i in range(0, len(patches), step):
            raw.append(patch_activations(model, s.base.tokens, s.source_cache, patches[i:i + step], s.metric,
                                         base_run=s.run))
            if log is not None:
                log(f"   {part}: {min(i + step, len(patches))} of {len(patches)} cells patched "
                    f"({time.perf_counter() - start:.0f} s)")
        return result(rows, list(masks), torch.cat(raw), s, False, "exact")


def _first_change(clean, corrupted) -> torch.Tensor:
    """Each example's first position whose token differs between clean and corrupted (n_pos if none)."""
    differs = (clean.tokens.cpu() != corrupted.tokens.cpu())
    n_pos = differs.shape[1]
    return torch.where(differs.any(1), differs.int().argmax(1), torch.full((len(differs),), n_pos))


def grid_blocks(model, clean, corrupted, hooks: list[str], roles: list[str] | None) -> float:
    """Token-blocks a perfect engine recomputes for ``hooks`` x ``roles`` (plus its two base forwards).

    A patch of layer ``L`` whose first changed position is ``p`` reruns blocks ``L..`` on positions ``p`` up
    to the prediction position ``q``: ``(n_layers - L) * (q - p + 1)`` token-blocks per example it changes
    (times the heads of a per-head hook).  Before the first token that differs between the clean and the
    corrupted prompt nothing differs (attention is causal); ``resid_pre`` of layer 0 differs only at the
    differing tokens themselves.
    """
    from icr_interp.analysis.causal.patching.core import kind
    from icr_interp.task import roles as R

    c = model.cfg
    n, n_pos = clean.tokens.shape
    layout = corrupted.layout.to("cpu") if hasattr(corrupted.layout, "to") else corrupted.layout
    masks = R.masks(layout, n_pos, roles if roles is not None else R.default_roles(layout))
    q = layout.pred_pos.cpu()
    first = _first_change(clean, corrupted)
    pos = torch.arange(n_pos)[None]
    token_diff = clean.tokens.cpu() != corrupted.tokens.cpu()
    total = 2.0 * n * n_pos * c.n_layers  # clean and corrupted base runs
    for hook in hooks:
        layer, site = H.split(hook)
        width = c.n_heads if kind(hook) != "pos" else 1
        for mask in masks.values():
            mask = mask.cpu()
            if kind(hook) == "pattern":  # the query row is written; it changes where a source entry does
                changed = (mask & (pos >= first[:, None])).any(1)
                start = q
            else:
                moved = token_diff if (layer == 0 and site == "resid_pre") else pos >= first[:, None]
                hit = mask & moved & (pos <= q[:, None])
                changed = hit.any(1)
                start = torch.where(changed, hit.int().argmax(1), q)
            total += width * float(((c.n_layers - layer) * (q - start + 1) * changed).sum())
    return total


def fine_hooks(model) -> list[str]:
    """Every layer's per-head ``z`` and attention pattern: the full grid's rows (one per head each)."""
    return [H.hook(layer, site) for layer in range(model.cfg.n_layers) for site in ("z", "pattern")]


def screen_and_confirm(model, clean, corrupted, top_k: int = 10, seed: int = 0):
    """The full grid (every head's z x role, every head's query-row pattern x source role) screened by AtP* and
    its top ``2 * top_k`` cells plus ``top_k`` random others patched exactly
    (:func:`icr_interp.analysis.causal.patching.screen_and_confirm`; its result reports the recall of the exact top-k
    and the Spearman rank correlation of estimate and exact effect)."""
    from icr_interp.analysis.causal.patching import screen_and_confirm as screen

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return screen(model, clean, corrupted, hooks=fine_hooks(model), k=top_k, seed=seed)


class PerPrompt:
    """The logit difference of each prompt at its prediction position (a ``[batch]`` metric, not its mean);
    declares the positions it reads, so the engine recomputes nothing after them."""

    def __init__(self, clean_answers, corrupted_answers, pred_pos):
        self.clean, self.corrupted, self.pred = clean_answers, corrupted_answers, pred_pos

    def read_positions(self, n_pos: int) -> torch.Tensor:
        return self.pred

    def on_rows(self, rows: torch.Tensor) -> torch.Tensor:
        i = torch.arange(rows.shape[0], device=rows.device)
        return rows[i, self.clean.to(rows.device)] - rows[i, self.corrupted.to(rows.device)]

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        i = torch.arange(logits.shape[0], device=logits.device)
        return self.on_rows(logits[i, self.pred.to(logits.device)])


def per_prompt_cells(model, clean, corrupted, cells: list[tuple[str, int | None, str]]) -> dict:
    """Each prompt's logit difference under each ``(hook, head, role)`` patch (clean into corrupted), and on the
    clean and corrupted runs: ``{"patched": [cell prompt], "clean": [prompt], "corrupted": [prompt]}``."""
    from icr_interp.analysis.causal.patching import patch_activations
    from icr_interp.analysis.causal.patching.by_role import grid_masks, role_patch, setup

    metric = PerPrompt(clean.answers, corrupted.answers, corrupted.layout.pred_pos)
    s = setup(model, clean, corrupted, None, sorted({c[0] for c in cells}), False)
    masks, query = grid_masks(s, sorted({c[2] for c in cells}))
    patches = [role_patch(hook, head, masks[role].to(query.device), query) for hook, head, role in cells]
    patched = patch_activations(model, s.base.tokens, s.source_cache, patches, metric, base_run=s.run)
    with torch.no_grad():
        clean_run = model(clean.tokens.to(model.cfg.device))
    return dict(patched=patched.float().cpu(), clean=metric(clean_run).float().cpu(),
                corrupted=metric(s.run.logits).float().cpu())


def restored_interval(patched: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor, n_boot: int = 1000,
                      level: float = 0.95, seed: int = 0) -> dict:
    """Normalised effect ``(mean patched - mean corrupted) / (mean clean - mean corrupted)`` of each cell with
    its percentile-bootstrap interval over prompts (the same resamples for every cell):
    ``{"value": [cell], "lo": [cell], "hi": [cell]}``."""
    patched, clean, corrupted = patched.double(), clean.double(), corrupted.double()
    n = clean.shape[0]
    idx = torch.randint(n, (n_boot, n), generator=torch.Generator().manual_seed(seed))

    def ratio(p, c, x):
        return (p.mean(-1) - x.mean(-1)) / (c.mean(-1) - x.mean(-1))

    boots = ratio(patched[:, idx], clean[idx], corrupted[idx])  # [cell boot]
    tail = (1 - level) / 2
    lo, hi = torch.nanquantile(boots, torch.tensor([tail, 1 - tail], dtype=boots.dtype), dim=-1)
    return dict(value=ratio(patched, clean, corrupted).tolist(), lo=lo.tolist(), hi=hi.tolist())
