"""Running a sweep's configs: in this process, in a local process pool, or on Ray.

:func:`run_one` is one run of the sweep -- ``icr_interp.run(config).record()``,
the same numbers as ``icr_interp.run`` and ``icr-interp train`` for that
config.  :func:`run_sweep` runs every config whose key is not yet in the
results file (:class:`~icr_interp.experiments.sweep.store.ResultsStore`) and records each
as it finishes.

* ``executor="local"``: a ``spawn`` process pool (safe with torch), one torch
  thread per worker; ``workers=0`` runs in this process, serially.  Workers die
  with their sweep, ``kill -9`` included: each asks the kernel for SIGKILL when
  its parent dies (Linux ``prctl(PR_SET_PDEATHSIG)``) and also watches its
  parent's pid from a thread (elsewhere); the resource tracker exits once they
  are gone.
* ``executor="ray"``: Ray tasks (``num_cpus=1``) on a local instance or the
  cluster at ``ray_address`` (``pip install icr_interp[ray]``).

A run that raises is reported in one line (exception, message, where it was
raised), is not recorded, and reruns next time; :class:`SweepError` lists the
failures once every other run has finished.
"""

import concurrent.futures as cf
import multiprocessing as mp
import os
import sys
import traceback
import warnings
from pathlib import Path
from collections.abc import Callable, Sequence

from tqdm.auto import tqdm

from icr_interp.experiments.worker import die_with_parent, init_worker  # noqa: F401 -- die_with_parent re-exported
from icr_interp.experiments.sweep.store import ResultsStore, check_summary
from icr_interp.pipeline.config import RunConfig
from icr_interp.plumbing import check_int, one_line

EXECUTORS = ("local", "ray")
TIMING_FIELDS = ("seconds",)  # result fields that differ between otherwise identical runs


def run_one(config: RunConfig) -> dict:
    """One run of a sweep: :func:`icr_interp.run` of ``config``, as its JSON record."""
    from icr_interp.pipeline.runner import run

    return run(config).record()


class SweepError(RuntimeError):
    """Some runs failed; the others are in the results file (a rerun retries only the failed ones)."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures  # key -> one-line error
        first_key, first = next(iter(failures.items()))
        super().__init__(f"{len(failures)} run(s) failed (first: {first_key}: {first})")


def failure_text(e: BaseException) -> str:
    """A failed run's record: ``Type: message (at file:line in function)`` -- the message squeezed by
    :func:`icr_interp.plumbing.one_line` (the one formatter), with its type and where it was raised."""
    text = one_line(e) if str(e).strip() else ""
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(e).__name__}: {text}{where}" if text else f"{type(e).__name__}{where}"


def run_sweep(configs: Sequence[RunConfig], out_path: str | Path, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, progress: bool = True, run_fn: Callable[[RunConfig], dict] = run_one,
              wait: bool = True, log: Callable[[str], None] | None = None,
              summary: str | Path | None = None) -> list[dict]:
    """Run every config whose key is not yet in ``out_path``, appending records as they finish.

    Args:
        configs: the runs (e.g. from :func:`~icr_interp.experiments.sweep.grid.expand_grid`); duplicate keys run once.
            First-release ``RunSpec`` objects (deprecated) are converted.
        out_path: JSONL results file; created if missing, resumed if present.
        executor: ``"local"`` or ``"ray"``.
        workers: local: processes (default ``min(2, cpu count)``; 0 runs here, serially).
            Ray: most tasks in flight (default: all) and the CPUs of a local instance.
        ray_address: Ray cluster to connect to; None starts a local instance (an
            instance already initialised in this process is used and left running).
        progress: show a progress bar over completed runs.
        run_fn: a picklable top-level function of a RunConfig returning a JSON-able dict with ``accuracy``.
        wait: if another sweep holds the file's lock, wait for it; otherwise raise ``locks.LockBusy``.
        log: called with one line when waiting for the lock (default: stderr).
        summary: also write this CSV of every record in ``out_path`` (all sweeps' runs), before the lock is
            released, so that concurrent sweeps leave the union (see :func:`~icr_interp.experiments.sweep.store.
            check_summary` for when it may be replaced).

    Returns:
        The record of every config, in order (earlier runs read from the file).

    Raises:
        SweepError: after all other runs finished, if some runs raised.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if workers is not None:
        check_int(workers, "workers", 0)
    if summary is not None:
        check_summary(summary)  # a user's own X.csv is refused before any run, not after
    unique = list({c.key: c for c in (c if isinstance(c, RunConfig) else c.to_config() for c in configs)}.values())
    failures: dict[str, str] = {}
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with ResultsStore(out_path, wait=wait, log=log or (lambda line: print(line, file=sys.stderr))) as store:
        todo = [c for c in unique if c.key not in store.done]
        bar = tqdm(total=len(unique), initial=len(unique) - len(todo), desc="sweep", disable=not progress)

        def record(key: str, result: dict | None, error: str | None) -> None:
            if error is None:
                try:
                    store.append(dict(result, key=key))
                except ValueError as e:  # the run returned something that is not a record
                    error = one_line(e)
            if error is not None:
                failures[key] = error
                warnings.warn(f"run {key} failed; it is not recorded and will rerun next time: {error}")
            bar.update(1)

        if todo and executor == "local":
            _run_local(todo, run_fn, workers, record)
        elif todo:
            _run_ray(todo, run_fn, workers, ray_address, record)
        bar.close()
        done = dict(store.done)
        if summary is not None:
            store.write_summary(summary)
    if failures:
        raise SweepError(failures)
    return [done[c.key] for c in unique]


def _call(run_fn: Callable, config: RunConfig) -> tuple[dict | None, str | None]:
    """Run one config; an exception comes back as one line."""
    try:
        return run_fn(config), None
    except Exception as e:  # noqa: BLE001 -- reported per run, the sweep goes on
        return None, failure_text(e)


def _outcome(get: Callable[[], tuple]) -> tuple[dict | None, str | None]:
    """A finished job's (result, error); a worker that died (not the run raising) becomes an error too."""
    try:
        return get()
    except Exception as e:  # noqa: BLE001
        return None, f"the worker running it died ({failure_text(e)})"


# ------------------------------------------------------------------ local
def _run_local(todo: list[RunConfig], run_fn: Callable, workers: int | None, record: Callable) -> None:
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers == 0:
        for config in todo:
            record(config.key, *_call(run_fn, config))
        return
    _quiet_resource_tracker()
    pool = cf.ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=mp.get_context("spawn"),
                                  initializer=init_worker, initargs=(os.getpid(),))
    try:
        futures = {pool.submit(_call, run_fn, config): config.key for config in todo}
        for fut in cf.as_completed(futures):
            record(futures[fut], *_outcome(fut.result))
    except BaseException:  # Ctrl-C or a failed write: drop the queue and the runs in flight (they rerun next time)
        workers_ = list((getattr(pool, "_processes", None) or {}).values())  # the pool's only handle on them
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers_:
            process.terminate()
        for process in workers_:
            process.join(5)  # joined: their queues and semaphores are released, not reported leaked at exit
        raise
    pool.shutdown()


# The resource tracker frees the pool's semaphores when a sweep is killed (kill -9) and then warns that it
# did, once per sweep; the cleanup is its job, so the warning is noise.  Its process takes its warning
# filters from sys.warnoptions when it starts (multiprocessing passes them as -W flags).
_TRACKER_FILTER = "ignore:resource_tracker:UserWarning"


def _quiet_resource_tracker() -> None:
    if _TRACKER_FILTER not in sys.warnoptions:
        sys.warnoptions.append(_TRACKER_FILTER)


# -------------------------------------------------------------------- ray
def _ray_call(run_fn: Callable, config: RunConfig) -> tuple[dict | None, str | None]:
    import torch

    torch.set_num_threads(1)
    return _call(run_fn, config)


def _run_ray(todo: list[RunConfig], run_fn: Callable, workers: int | None, ray_address: str | None,
             record: Callable) -> None:
    try:
        import ray
    except ImportError:
        raise ImportError("executor='ray' needs Ray: pip install icr_interp[ray]") from None
    started = not ray.is_initialized()
    in_flight: dict = {}  # object ref -> key
    if started:
        if ray_address is None:
            ray.init(num_cpus=workers or None, include_dashboard=False)
        else:
            ray.init(address=ray_address)
    try:
        task = ray.remote(num_cpus=1)(_ray_call)
        limit = workers or len(todo)
        queue = list(todo)
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                config = queue.pop(0)
                in_flight[task.remote(run_fn, config)] = config.key
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                record(in_flight.pop(ref), *_outcome(lambda: ray.get(ref)))  # noqa: B023 -- called at once
    except BaseException:
        for ref in in_flight:
            ray.cancel(ref)
        raise
    finally:
        if started:
            ray.shutdown()
