"""What a patch is, and the primitives every patching path shares (hook kinds, entry masks, hooked writes)."""

from dataclasses import dataclass
from collections.abc import Callable, Iterator, Sequence

import torch
from jaxtyping import Bool
from torch import Tensor

from icr_interp.model import hooks as H
from icr_interp.tl.compat import ActivationCache, TLModel

Source = ActivationCache | dict  # source-run activations by hook name

# Per-head activations are [batch pos head ...]; patterns are [batch head dest src] (icr_interp.model.hooks.TABLE).
HEAD_HOOKS = H.leaves("head")
PATTERN_HOOKS = H.leaves("pattern")
# Memory stages patched by role (why only stage I's output: icr_interp.model.hooks).
MEMORY_HOOKS = tuple(H.SITES[site].rpartition(".")[2] for site in H.MEMORY_SITES)
DEFAULT_MAX_ROWS = 2048  # residual rows pushed through the MLP per chunk (bounds memory)
DEFAULT_MAX_LOGITS_BYTES = 2**28  # assembled patched logits held at once
INDEX_DIMS = {"pos": 1, "head": 2, "pattern": 3}  # dims after batch that a patch indexes


@dataclass(frozen=True)
class Patch:
    """One patch: which entries of one activation take the source run's value.

    For per-position activations (``[batch pos ...]``) ``positions`` says which
    positions; per-head activations (``[batch pos head ...]``) add ``head``;
    attention patterns (``[batch head dest src]``) read ``positions`` as
    destinations and ``src`` as sources.  A batch dimension of 1 broadcasts.
    """

    hook: str  # full hook name, e.g. hooks.hook(0, "resid_pre")
    positions: Bool[Tensor, "batch pos"]  # patched (destination) positions per example
    head: int | None = None  # head index (None: all heads)
    src: Bool[Tensor, "batch pos"] | None = None  # source positions, patterns only (None: all)


kind = H.kind  # "pattern", "head" (per-head activation) or "pos" (per-position activation), from the site table


def entry_masks(patches: Sequence[Patch], batch: int, n_pos: int, n_heads: int,
                device) -> Bool[Tensor, "patch batch ..."]:
    """Which entries each patch replaces, per example: ``[patch batch *index_dims]``."""
    k = kind(patches[0].hook)
    pos = torch.stack([p.positions.to(device).expand(batch, n_pos) for p in patches])
    if k == "pos":
        return pos
    head = torch.tensor([-1 if p.head is None else p.head for p in patches], device=device)
    heads = (torch.arange(n_heads, device=device)[None] == head[:, None]) | (head[:, None] < 0)  # [patch head]
    if k == "head":
        return pos[..., None] & heads[:, None, None, :]
    src = torch.stack([torch.ones(batch, n_pos, dtype=torch.bool, device=device) if p.src is None
                       else p.src.to(device).expand(batch, n_pos) for p in patches])
    return heads[:, None, :, None, None] & pos[:, :, None, :, None] & src[:, :, None, None, :]


def differs(k: str, source: Tensor, base: Tensor) -> Bool[Tensor, "batch ..."]:
    """Entries (at the patch's index granularity) where source and base differ."""
    ne = source != base
    keep = 1 + INDEX_DIMS[k]
    return ne.flatten(keep).any(-1) if ne.ndim > keep else ne


def patched_positions(hook: str, entry: Tensor) -> Bool[Tensor, "sample pos"]:
    """Positions (destinations, for patterns) a sample's patch touches."""
    k = kind(hook)
    return entry if k == "pos" else entry.any(-1) if k == "head" else entry.any(1).any(-1)


def where_hook(mask: Tensor, values: Tensor) -> Callable:
    """A TransformerLens hook writing ``values`` wherever ``mask`` (broadcast over trailing dims) holds."""
    def hook(act: Tensor, hook) -> Tensor:
        m = mask[(...,) + (None,) * (act.ndim - mask.ndim)]  # broadcast over the trailing dims
        return torch.where(m, values.to(act.dtype), act)
    return hook


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` (at least 1)."""
    for start in range(0, n, max(1, size)):
        yield slice(start, min(n, start + max(1, size)))


@dataclass
class Run:
    """Everything a batch of patches needs: model, base run, source activations."""

    model: TLModel
    tokens: Tensor  # [batch pos] base-run tokens
    logits: Tensor  # [batch pos vocab] base-run logits
    base: dict  # base-run activations by hook name
    source: Source  # source-run activations by hook name
    fast: bool  # one-layer path available
    max_rows: int  # rows per recomputation chunk
    read: Tensor | None = None  # [batch] the one position per example the metric reads (None: all)

    def src(self, hook: str) -> Tensor:
        try:
            return self.source[hook].to(self.tokens.device)
        except KeyError as err:
            raise KeyError(f"the source cache has no activation {hook!r}; cache it (names_filter)") from err
