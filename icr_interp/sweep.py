"""Parameter sweeps: a grid of fine-tuning runs, run locally or on Ray, resumable.

A sweep is a list of :class:`RunSpec` -- one fine-tuning run each, fully
described by plain fields (knowledge-base size and overlap, number of context
pairs k, memory, training-set size, seed, ...).  :func:`expand_grid` builds the
list as a Cartesian product; every spec has a deterministic ``key``.

:func:`run_sweep` runs the specs and appends one JSON line per finished run to
a results file, flushed and fsynced, so the file is the sweep's state: started
again on the same file, a sweep skips every key already there (resume after a
crash or a kill).  A kill mid-write can leave a truncated last line; it is
dropped and the file rewritten cleanly.  Runs execute in

* ``executor="local"``: a process pool (``spawn`` context: safe with torch), or
  in-process with ``workers=0``;
* ``executor="ray"``: Ray tasks (``num_cpus=1``) on a local Ray instance or the
  cluster at ``ray_address``; results are gathered with ``ray.wait`` as they
  complete.  Ray is an optional extra: ``pip install icr_interp[ray]``.

Every random generator of a run is seeded from its spec (knowledge base, basis,
attention initialisation, training set, evaluation prompts); worker processes
use one torch thread, so a run gives the same numbers on either executor.

Example::

    specs = expand_grid(kb_sizes=[(64, 8, 64), (256, 8, 256)], n_pairs=[2, 4], seeds=[0, 1],
                        n_samples=[64, 256], steps=200)
    results = run_sweep(specs, "results/sample_complexity.jsonl", workers=2)
    to_csv(results, "results/sample_complexity.csv")
"""

import concurrent.futures as cf
import csv
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterable, Sequence

from tqdm.auto import tqdm

from icr_interp.memory import MEMORIES

EXECUTORS = ("local", "ray")
TIMING_FIELDS = ("seconds",)  # result fields that differ between otherwise identical runs

# Offsets that keep a run's generators apart: the training set is drawn with
# ``seed`` itself (finetune), evaluation and template prompts from disjoint seeds.
EVAL_SEED_OFFSET = 1_000_003
TEMPLATE_SEED_OFFSET = 2_000_003


# ---------------------------------------------------------------- the grid
@dataclass(frozen=True)
class RunSpec:
    """One fine-tuning run: everything needed to reproduce it."""

    n_subjects: int  # subjects in the random knowledge base
    n_relations: int  # relations in the random knowledge base
    n_answers: int  # answers in the random knowledge base
    answer_overlap: float = 1.0  # 0 = disjoint answer sets (control), 1 = one shared set
    mapping: str = "balanced"  # knowledge-base mapping: balanced (reference) | random
    n_pairs: int = 4  # context pairs k per prompt
    bos: bool = True  # prompts start with BOS
    memory: str = "constructed"  # constructed | pair | answer | pretrained (build_model)
    d_model: int = 0  # residual width; 0 = build_model's default
    seed: int = 0  # seeds the knowledge base, the model, the training set (eval/template seeds derive from it)
    n_samples: int = 256  # size of the fixed training set
    steps: int = 400  # fine-tuning optimiser steps
    n_eval: int = 1024  # held-out prompts for accuracy and loss
    n_template: int = 256  # prompts for template scores (0 = skip template scoring)

    def __post_init__(self) -> None:
        # Normalise types so equal specs have equal keys (1 vs 1.0, numpy ints, ...).
        for f in fields(self):
            object.__setattr__(self, f.name, f.type(getattr(self, f.name)))
        if min(self.n_subjects, self.n_relations, self.n_answers) < 1:
            raise ValueError(f"knowledge-base sizes must be >= 1, got {self.kb_size}")
        if self.n_pairs < 1 or self.n_pairs + 1 > self.n_subjects:
            raise ValueError(f"n_pairs={self.n_pairs} needs 1 <= k and k + 1 <= n_subjects={self.n_subjects}")
        if not 0.0 <= self.answer_overlap <= 1.0:
            raise ValueError(f"answer_overlap must lie in [0, 1], got {self.answer_overlap}")
        if self.memory not in MEMORIES:
            raise ValueError(f"memory must be one of {MEMORIES}, got {self.memory!r}")
        if self.n_samples < 1 or self.steps < 0 or self.n_eval < 1 or self.n_template < 0:
            raise ValueError("n_samples and n_eval must be >= 1, steps and n_template >= 0")

    @property
    def kb_size(self) -> tuple[int, int, int]:
        return (self.n_subjects, self.n_relations, self.n_answers)

    @property
    def n_triplets(self) -> int:
        """Stored facts (random knowledge bases are complete)."""
        return self.n_subjects * self.n_relations

    @property
    def key(self) -> str:
        """Deterministic id: a readable summary plus a hash of every field."""
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha1(body.encode()).hexdigest()[:10]
        return (f"S{self.n_subjects}-R{self.n_relations}-A{self.n_answers}-ov{self.answer_overlap:g}"
                f"-k{self.n_pairs}-{self.memory}-n{self.n_samples}-seed{self.seed}-{digest}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        """The spec a result line was made from (extra result fields are ignored)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@dataclass(frozen=True)
class SweepSpec:
    """A grid: the Cartesian product of the axes, with fixed options shared by every run."""

    kb_sizes: tuple[tuple[int, int, int], ...] = ((64, 8, 64),)  # (n_subjects, n_relations, n_answers) each
    n_pairs: tuple[int, ...] = (4,)  # context pairs k
    seeds: tuple[int, ...] = (0,)  # run seeds
    n_samples: tuple[int, ...] = (256,)  # training-set sizes
    memory: tuple[str, ...] = ("constructed",)  # memories
    answer_overlap: tuple[float, ...] = (1.0,)  # answer overlaps
    mapping: str = "balanced"  # fixed: knowledge-base mapping
    bos: bool = True  # fixed: BOS token
    steps: int = 400  # fixed: fine-tuning steps
    d_model: int = 0  # fixed: residual width (0 = default)
    n_eval: int = 1024  # fixed: evaluation prompts
    n_template: int = 256  # fixed: template-scoring prompts (0 = skip)

    def expand(self) -> list[RunSpec]:
        """All runs, the last axis (answer_overlap) varying fastest."""
        fixed = dict(mapping=self.mapping, bos=self.bos, steps=self.steps, d_model=self.d_model,
                     n_eval=self.n_eval, n_template=self.n_template)
        axes = itertools.product(self.kb_sizes, self.n_pairs, self.seeds, self.n_samples, self.memory,
                                 self.answer_overlap)
        return [RunSpec(n_subjects=s, n_relations=r, n_answers=a, n_pairs=k, seed=seed, n_samples=n, memory=mem,
                        answer_overlap=ov, **fixed)
                for (s, r, a), k, seed, n, mem, ov in axes]


def sizes_for_triplets(n_triplets: Iterable[int], n_relations: int = 8) -> tuple[tuple[int, int, int], ...]:
    """Knowledge-base sizes with about ``n_triplets`` facts: S = N / R subjects and as many answers.

    With ``n_answers = n_subjects`` each relation of a balanced base is a
    bijection from subjects onto its answers (the reference, docs/theory.md).
    """
    sizes = []
    for n in n_triplets:
        s = max(2, round(n / n_relations))
        sizes.append((s, n_relations, s))
    return tuple(sizes)


def expand_grid(kb_sizes: Sequence[tuple[int, int, int]] | None = None, *, n_triplets: Sequence[int] | None = None,
                n_relations: int = 8, **axes_and_options) -> list[RunSpec]:
    """The runs of a grid (see :class:`SweepSpec` for the axes and options).

    Args:
        kb_sizes: ``(n_subjects, n_relations, n_answers)`` per knowledge-base size.
        n_triplets: alternatively, numbers of facts (see :func:`sizes_for_triplets`).
        n_relations: relations used with ``n_triplets``.
        **axes_and_options: ``n_pairs``, ``seeds``, ``n_samples``, ``memory``,
            ``answer_overlap`` (a value or a list of values each) and the fixed
            options ``mapping``, ``bos``, ``steps``, ``d_model``, ``n_eval``, ``n_template``.

    Returns:
        The runs, without duplicates, in grid order.
    """
    if kb_sizes is not None and n_triplets is not None:
        raise ValueError("give kb_sizes or n_triplets, not both")
    if n_triplets is not None:
        kb_sizes = sizes_for_triplets(n_triplets, n_relations)
    known = {f.name for f in fields(SweepSpec)}
    unknown = set(axes_and_options) - known
    if unknown:
        raise TypeError(f"unknown grid arguments {sorted(unknown)}; expected some of {sorted(known)}")
    kwargs = {name: _as_axis(value) if _is_axis(name) else value for name, value in axes_and_options.items()}
    if kb_sizes is not None:
        kb_sizes = [kb_sizes] if len(kb_sizes) == 3 and all(isinstance(x, int) for x in kb_sizes) else kb_sizes
        kwargs["kb_sizes"] = tuple(tuple(int(x) for x in size) for size in kb_sizes)
    specs = SweepSpec(**kwargs).expand()
    return list({spec.key: spec for spec in specs}.values())


def _is_axis(name: str) -> bool:
    return isinstance(getattr(SweepSpec, name, None), tuple)


def _as_axis(value) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return (value,)
    return tuple(value)


# ------------------------------------------------------------------ one run
def run_one(spec: RunSpec) -> dict:
    """Build, fine-tune and evaluate one run.

    Returns:
        A JSON-able dict: ``key``, the spec's fields, ``accuracy`` and ``loss``
        (held-out), ``train_loss`` / ``train_accuracy`` (last step),
        ``construction``, ``d_model_used``, ``n_triplets``, ``query_attention``
        (mean query row), ``seconds``, and -- when ``n_template > 0`` -- the
        template scores ``pairwise``, ``balance``, ``pair_mass``, ``best`` (per
        example, at the head that matters) and the same four on the mean
        attention row as ``mean_row_pairwise``, ... .
    """
    from icr_interp.knowledge import KnowledgeBase
    from icr_interp.model import build_model
    from icr_interp.task import ICRecallTask
    from icr_interp.train import evaluate, finetune

    start = time.perf_counter()
    kb = KnowledgeBase.random(spec.n_subjects, spec.n_relations, spec.n_answers, answer_overlap=spec.answer_overlap,
                              seed=spec.seed, mapping=spec.mapping)
    task = ICRecallTask(kb, n_pairs=spec.n_pairs, bos=spec.bos)
    model = build_model(task, memory=spec.memory, d_model=spec.d_model or None, seed=spec.seed)
    history = finetune(model, task, n_samples=spec.n_samples, steps=spec.steps, seed=spec.seed, progress=False)
    metrics = evaluate(model, task, n_prompts=spec.n_eval, seed=spec.seed + EVAL_SEED_OFFSET)
    result = dict(key=spec.key, **spec.to_dict(), n_triplets=kb.n_triplets,
                  construction=model.icr_config.construction, d_model_used=model.cfg.d_model,
                  accuracy=metrics["accuracy"], loss=metrics["loss"],
                  train_loss=history.loss[-1] if history.loss else None,
                  train_accuracy=history.accuracy[-1] if history.accuracy else None,
                  query_attention=metrics["query_attention"])
    if spec.n_template > 0:
        result.update(_template_scores(model, task, spec))
    result["seconds"] = time.perf_counter() - start
    return result


def _template_scores(model, task, spec: RunSpec) -> dict:
    """Template-score fields of a run: per example and on the mean attention row (DESIGN: report both)."""
    from icr_interp.templates import score_templates

    return score_templates(model, task.sample(spec.n_template, seed=spec.seed + TEMPLATE_SEED_OFFSET)).headline()


def _jsonable(value):
    """Tensors and numpy values as plain Python numbers and lists."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


# ------------------------------------------------------------ results file
def load_results(path: str | Path) -> list[dict]:
    """The result lines of a JSONL file (a truncated last line is ignored; missing file: [])."""
    return _read_jsonl(Path(path))[0]


def _read_jsonl(path: Path) -> tuple[list[dict], bool]:
    """(records, clean): clean is False when the file needs rewriting (truncated last line)."""
    if not path.exists():
        return [], True
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records, clean = [], text == "" or text.endswith("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if any(rest.strip() for rest in lines[i + 1:]):
                raise ValueError(f"{path}:{i + 1}: damaged result line (not the last line, so not a "
                                 f"kill mid-write); fix or remove it") from None
            warnings.warn(f"{path}:{i + 1}: ignoring a truncated last line (a run killed mid-write)")
            clean = False
    return records, clean


def _rewrite(path: Path, records: list[dict]) -> None:
    """Replace the file with ``records``, atomically."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append(f, record: dict) -> None:
    """One line, on disk before the next run is recorded."""
    f.write(json.dumps(record) + "\n")
    f.flush()
    os.fsync(f.fileno())


def to_csv(results: Sequence[dict], path: str | Path) -> None:
    """Write results as CSV: one column per field (first-seen order), lists and dicts as JSON."""
    columns = list(dict.fromkeys(name for rec in results for name in rec))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for rec in results:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in rec.items()})


# ----------------------------------------------------------------- sweeping
class SweepError(RuntimeError):
    """Some runs failed; the others are in the results file (a rerun retries only the failed ones)."""

    def __init__(self, failures: dict[str, str]):
        self.failures = failures  # key -> traceback text
        first_key, first_tb = next(iter(failures.items()))
        super().__init__(f"{len(failures)} run(s) failed (first: {first_key}):\n{first_tb}")


def run_sweep(specs: Sequence[RunSpec], out_path: str | Path, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, progress: bool = True,
              run_fn: Callable[[RunSpec], dict] = run_one) -> list[dict]:
    """Run every spec whose key is not yet in ``out_path``, appending results as they finish.

    Args:
        specs: the runs (e.g. from :func:`expand_grid`); duplicate keys run once.
        out_path: JSONL results file; created if missing, resumed if present.
        executor: ``"local"`` (process pool) or ``"ray"``.
        workers: local: processes (default ``min(2, cpu count)``; 0 runs in this
            process, serially). Ray: most tasks in flight (default: all at once)
            and the CPUs of a local Ray instance started here.
        ray_address: Ray cluster to connect to (its workers need icr_interp
            installed); None starts a local instance. If Ray is already
            initialised in this process, that instance is used and left running.
        progress: show a progress bar over completed runs.
        run_fn: the function run per spec; must be a picklable top-level
            function returning a JSON-able dict (default :func:`run_one`).

    Returns:
        The result of every spec, in the order of ``specs`` (earlier runs read from the file).

    Raises:
        SweepError: after all other runs finished, if some runs raised.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if workers is not None and workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    records, clean = _read_jsonl(out_path)
    if not clean:
        _rewrite(out_path, records)
    done = {}
    for rec in records:
        done.setdefault(rec.get("key"), rec)
    unique = list({spec.key: spec for spec in specs}.values())
    todo = [spec for spec in unique if spec.key not in done]
    failures: dict[str, str] = {}
    bar = tqdm(total=len(unique), initial=len(unique) - len(todo), desc="sweep", disable=not progress)
    with out_path.open("a", encoding="utf-8") as f:
        def record(key: str, result: dict | None, error: str | None) -> None:
            if error is not None:
                failures[key] = error
                warnings.warn(f"run {key} failed; it is not recorded and will rerun next time")
            else:
                result = _jsonable(dict(result, key=key))
                _append(f, result)
                done[key] = result
            bar.update(1)

        if todo and executor == "local":
            _run_local(todo, run_fn, workers, record)
        elif todo:
            _run_ray(todo, run_fn, workers, ray_address, record)
    bar.close()
    if failures:
        raise SweepError(failures)
    return [done[spec.key] for spec in unique]


def _call(run_fn: Callable[[RunSpec], dict], spec: RunSpec) -> tuple[dict | None, str | None]:
    """Run one spec in a worker; an exception comes back as its traceback text."""
    try:
        return run_fn(spec), None
    except Exception:  # noqa: BLE001 -- reported per run, the sweep goes on
        return None, traceback.format_exc()


def _outcome(get: Callable[[], tuple]) -> tuple[dict | None, str | None]:
    """A finished job's (result, error); a worker that died (not the run raising) becomes an error too."""
    try:
        return get()
    except Exception:  # noqa: BLE001
        return None, traceback.format_exc()


def _init_worker() -> None:
    """One torch thread per worker: runs are parallel across processes, not within."""
    import torch

    torch.set_num_threads(1)


def _run_local(todo: list[RunSpec], run_fn: Callable, workers: int | None, record: Callable) -> None:
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    if workers == 0:
        for spec in todo:
            record(spec.key, *_call(run_fn, spec))
        return
    # spawn: fresh interpreters, no forked torch/OpenMP state
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"), initializer=_init_worker)
    try:
        futures = {pool.submit(_call, run_fn, spec): spec.key for spec in todo}
        for fut in cf.as_completed(futures):
            record(futures[fut], *_outcome(fut.result))
    except BaseException:  # Ctrl-C or a failed write: drop the queue instead of finishing it
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _ray_call(run_fn: Callable[[RunSpec], dict], spec: RunSpec) -> tuple[dict | None, str | None]:
    _init_worker()
    return _call(run_fn, spec)


def _run_ray(todo: list[RunSpec], run_fn: Callable, workers: int | None, ray_address: str | None,
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
                spec = queue.pop(0)
                in_flight[task.remote(run_fn, spec)] = spec.key
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
