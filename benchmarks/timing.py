"""The one timing helper every benchmark uses: warm-up, repeats, best and median, peak RSS.

Timings on a shared machine are noisy, so each function is called ``warmup``
times untimed (allocator, MKL packing, lazy inits), then ``repeats`` times;
:class:`Timing` keeps the best (the least disturbed run) and the median.
Functions compared with each other take turns (round-robin), so load from
other jobs falls on all of them alike and their ratios stay fair.  Peak
memory is the process's peak resident set size from ``resource.getrusage``
(a high-water mark: measure one configuration per process to attribute it).
"""

import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls of one function."""

    best: float  # minimum: the least disturbed run on a shared machine
    median: float
    repeats: int

    def __str__(self) -> str:
        return f"best {self.best * 1e3:9.2f} ms, median {self.median * 1e3:9.2f} ms (n={self.repeats})"


def measure(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, Timing]:
    """Time each ``fns[name]()`` ``repeats`` times after ``warmup`` untimed calls, taking turns."""
    if repeats < 1 or warmup < 0:
        raise ValueError("repeats must be >= 1 and warmup >= 0")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(min(t), statistics.median(t), repeats) for name, t in times.items()}


def timed(fn: Callable, *args, **kwargs) -> tuple[object, float]:
    """One call's result and wall-clock seconds (for runs too long to repeat)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def peak_rss_gb() -> float:
    """This process's peak resident set size so far, in GB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1e9 if sys.platform == "darwin" else 1e9 / 1024)


def ratio(slow: Timing, fast: Timing) -> float:
    """Speed-up of ``fast`` over ``slow``, from the best times."""
    return slow.best / fast.best
