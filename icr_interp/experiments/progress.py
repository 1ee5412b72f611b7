"""Long runs a person can watch and interrupt: a time estimate before the work, progress lines, phases saved.

A real-model probe runs for minutes.  Three things make that bearable:

* **an estimate first**, calibrated on one forward pass of the model on the prompts actually analysed
  (:func:`calibrate`): seconds per *token-block* (one token through one transformer block), times the
  token-blocks each phase will push through the model (:func:`forward_blocks` for whole forwards; the
  patching grids count their own, :func:`icr_interp.experiments.probe_grid.grid_blocks`);
* **progress lines** while it runs (:class:`Phases`): each phase says what it is, its estimate, and when it
  is done, how long it took;
* **each finished phase saved at once** (the ``save`` callback of :class:`Phases`), so a run killed in its
  third phase keeps the first two.

The estimate is a floor (the token-blocks a perfect engine recomputes, at the speed of one batched forward);
small recomputations run slower per token-block than one large forward, so real runs take longer by a factor
that :class:`Phases` prints at the end (actual / estimate).
"""

import sys
import time
from dataclasses import dataclass
from collections.abc import Callable

import torch
from jaxtyping import Int
from torch import Tensor


@dataclass(frozen=True)
class Calibration:
    """The measured cost of one token through one block of a model (one forward of a batch, timed)."""

    seconds_per_block: float  # seconds per token-block
    forward_s: float  # the timed forward
    n_tokens: int  # tokens in it (batch x positions)
    n_layers: int

    def seconds(self, token_blocks: float) -> float:
        return token_blocks * self.seconds_per_block

    def __str__(self) -> str:
        return (f"one forward of {self.n_tokens} tokens through {self.n_layers} blocks took {self.forward_s:.2f} s "
                f"({1e6 * self.seconds_per_block:.1f} us per token-block)")


@torch.no_grad()
def calibrate(model, tokens: Int[Tensor, "batch pos"]) -> Calibration:
    """Time one forward of ``tokens`` (logits included, as the analyses need them); a warm-up run first on
    one prompt, so lazy initialisation is not counted."""
    tokens = tokens.to(model.cfg.device)
    model(tokens[:1, :4])
    start = time.perf_counter()
    model(tokens)
    elapsed = time.perf_counter() - start
    n_blocks = tokens.numel() * model.cfg.n_layers
    return Calibration(elapsed / max(1, n_blocks), elapsed, tokens.numel(), model.cfg.n_layers)


def forward_blocks(model, n_prompts: int, n_pos: int, n_forwards: float = 1.0) -> float:
    """Token-blocks of ``n_forwards`` whole forwards of ``n_prompts`` prompts of ``n_pos`` tokens."""
    return n_forwards * n_prompts * n_pos * model.cfg.n_layers


def fmt_seconds(s: float) -> str:
    """``42 s``, ``3 min 5 s``, ``1 h 2 min``."""
    s = max(0.0, float(s))
    if s < 90:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


class Phases:
    """Runs named phases in order, printing an estimate up front and a line per phase; saves each result.

    Args:
        plan: ``{phase name: estimated seconds}`` in the order they will run (printed by :meth:`announce`).
        save: called as ``save(name, result)`` as soon as a phase finishes (write it to disk there).
        log: where progress lines go (default: print, flushed).
    """

    def __init__(self, plan: dict[str, float], save: Callable[[str, object], None] | None = None,
                 log: Callable[[str], None] | None = None):
        self.plan, self.save = dict(plan), save
        self.log = log or (lambda line: print(line, flush=True, file=sys.stdout))
        self.timings: dict[str, float] = {}
        self.start = time.perf_counter()

    @property
    def estimate(self) -> float:
        return sum(self.plan.values())

    def announce(self, calibration: Calibration | None = None) -> None:
        """The estimate of the whole run, phase by phase, before the heavy work."""
        if calibration is not None:
            self.log(f"[calibrate] {calibration}")
        parts = ", ".join(f"{name} ~{fmt_seconds(s)}" for name, s in self.plan.items())
        self.log(f"[estimate] about {fmt_seconds(self.estimate)} in {len(self.plan)} phases ({parts}); "
                 "each phase is saved when it finishes, so Ctrl-C keeps what is done")

    def run(self, name: str, fn: Callable[[], object]):
        """Run phase ``name``: a line before (its estimate, time so far), one after (its time), then save."""
        i = list(self.plan).index(name) + 1 if name in self.plan else len(self.timings) + 1
        estimate = self.plan.get(name)
        guess = f", estimated ~{fmt_seconds(estimate)}" if estimate is not None else ""
        self.log(f"[{i}/{len(self.plan)}] {name} ...{guess} (elapsed {fmt_seconds(self.elapsed)})")
        start = time.perf_counter()
        result = fn()
        self.timings[name] = round(time.perf_counter() - start, 2)
        if self.save is not None:
            self.save(name, result)
        vs = f" (estimated {fmt_seconds(estimate)}: x{self.timings[name] / estimate:.2f})" if estimate else ""
        self.log(f"[{i}/{len(self.plan)}] {name} done in {fmt_seconds(self.timings[name])}{vs}")
        return result

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def finish(self) -> str:
        """The closing line: total time against the estimate."""
        ratio = self.elapsed / self.estimate if self.estimate > 0 else float("nan")
        line = f"[done] {fmt_seconds(self.elapsed)} in all (estimated {fmt_seconds(self.estimate)}; x{ratio:.2f})"
        self.log(line)
        return line
