"""The floor of a patching grid: the token-blocks its patches must recompute, times the time of one.

A patch in block ``L`` whose first changed position in an example is ``p`` must recompute, at least, blocks
``L..n_layers-1`` at positions ``p..r`` (``r``: the position the metric reads, or the last one): that is
``(n_layers - L) * (r - p + 1)`` *token-blocks*.  A patch that changes nothing in an example (or only after
its read position) costs nothing there.  Summed over a grid's patches and examples, times the measured time
of one token-block (a plain forward of the blocks, divided by ``n_layers * batch * pos``), this is the
*floor*: what no exact engine can beat by recomputing less.  An engine's actual time over its floor says how
much it wastes (batching overhead, unembedding, assembling the metric).

Example::

    fl = patching.recompute_floor(model, corrupted.tokens, clean_cache, patches, metric)
    print(fl)   # 123,456 token-blocks x 12.3 us = 1.52 s
"""

import time
from dataclasses import dataclass
from collections.abc import Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from icr_interp.analysis.causal.patching import engine as E
from icr_interp.analysis.causal.patching.core import Patch, Run, Source, chunks
from icr_interp.analysis.causal.patching.metrics import Metric, read_positions
from icr_interp.model import hooks as H
from icr_interp.task.tokens import check_model_tokens
from icr_interp.tl.compat import TLModel


@dataclass(frozen=True)
class Floor:
    """The recompute floor of a list of patches (module docstring)."""

    token_blocks: int  # blocks x positions the patches must recompute, summed over changed examples
    seconds_per_token_block: float  # measured: one forward of the blocks / (n_layers x batch x pos)
    n_samples: int  # (patch, example) pairs that change what the metric reads

    @property
    def seconds(self) -> float:
        return self.token_blocks * self.seconds_per_token_block

    def __str__(self) -> str:
        return (f"floor: {self.token_blocks:,} token-blocks x {self.seconds_per_token_block * 1e6:.2f} us "
                f"= {self.seconds:.3f} s ({self.n_samples:,} changed (patch, example) samples)")


@torch.no_grad()
def seconds_per_token_block(model: TLModel, tokens: Int[Tensor, "batch pos"], repeats: int = 3,
                            min_tokens: int = 512) -> float:
    """Measured time of one block at one position: the best of ``repeats`` forwards of the blocks alone
    (no embedding, no unembedding), divided by ``n_layers * batch * pos``.  The prompts are repeated up to
    ``min_tokens`` tokens, so that the measure is of a well-filled batch (the floor is then the stricter)."""
    tokens = check_model_tokens(model, tokens).to(model.cfg.device)
    tokens = tokens.repeat(max(1, -(-min_tokens // tokens.numel())), 1)
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        model(tokens, stop_at_layer=model.cfg.n_layers)  # every block, then the final residual
        best = min(best, time.perf_counter() - start)
    return best / (model.cfg.n_layers * tokens.numel())


@torch.no_grad()
def recompute_floor(model: TLModel, tokens: Int[Tensor, "batch pos"], source_cache: Source,
                    patches: Sequence[Patch], metric: Metric | None = None, *, base_run: E.BaseRun | None = None,
                    per_token_block: float | None = None) -> Floor:
    """The recompute floor of ``patches`` (module docstring).

    Args:
        model, tokens, source_cache, patches: as :func:`~icr_interp.analysis.causal.patching.patch_activations`.
        metric: the metric, for the positions it declares it reads (None: every position is read).
        base_run: the base run of ``tokens`` (default: run it here).
        per_token_block: seconds per token-block (default: measured on ``tokens``).
    """
    tokens = check_model_tokens(model, tokens).to(model.cfg.device)
    hooks = list(dict.fromkeys(p.hook for p in patches))
    base = E._checked_base(model, tokens, hooks, ("general",), base_run)
    run = Run(model, tokens, base.logits, base.cache, source_cache, False, 1)
    n_layers, n_pos = model.cfg.n_layers, tokens.shape[1]
    read = None if metric is None else read_positions(metric, n_pos)
    read = None if read is None else read.to(tokens.device)
    blocks, n = 0, 0
    for sl in chunks(len(patches), 256):
        for _, g in E.samples(run, patches[sl], read):
            split = H.split(g.hook)
            layer = split[0] if split is not None else 0
            last = torch.full_like(g.first, n_pos - 1) if read is None else read[g.example]
            blocks += int(((last - g.first + 1).clamp(min=0) * (n_layers - layer)).sum())
            n += len(g.example)
    t = seconds_per_token_block(model, tokens) if per_token_block is None else per_token_block
    return Floor(blocks, t, n)
