"""Sweeps: grid of RunConfigs, a real local sweep, resume after failure / SIGKILL / truncation, the lock,
line validation, worker orphans, Ray parity."""

import csv
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from icr_interp.storage import locks
from icr_interp.pipeline.config import RunConfig
from icr_interp.experiments.sweep import (TIMING_FIELDS, ResultsError, RunSpec, SweepError, axes_of, expand_grid, flat,
                              load_results, run_one, run_sweep, to_csv)

MARKER_ENV = "ICR_SWEEP_TEST_DIR"
TINY = dict(seeds=[0, 1], n_samples=64, steps=20, n_eval=128, n_template=64)


# ------------------------------------------------------------ fake run_fns
def fake_run(spec: RunConfig) -> dict:
    """Cheap deterministic run that logs each call and can be told to fail or to be slow."""
    marker_dir = Path(os.environ[MARKER_ENV])
    with open(marker_dir / "calls.txt", "a") as f:
        f.write(spec.key + "\n")
    time.sleep(float(os.environ.get("ICR_SWEEP_TEST_SLEEP", "0")))
    if spec.seed == 1 and (marker_dir / "fail").exists():
        raise RuntimeError("injected failure")
    return dict(key=spec.key, seed=spec.seed, accuracy=spec.seed / 10, loss=1.0 + spec.seed, seconds=0.0)


def explode(spec: RunSpec) -> dict:
    raise AssertionError(f"run {spec.key} should have been skipped")


def _calls(marker_dir: Path) -> list[str]:
    path = marker_dir / "calls.txt"
    return path.read_text().split() if path.exists() else []


def _fake_specs(n: int) -> list[RunConfig]:
    return expand_grid("tiny", seeds=range(n), steps=1)


# ------------------------------------------------------------------- grid
def test_expand_grid_size_order_and_keys():
    configs = expand_grid(kb_sizes=[(16, 4, 16), (32, 4, 32)], n_pairs=[2, 4], seeds=[0, 1, 2], n_samples=[64, 256],
                          memory="constructed", answer_overlap=[0.0, 1.0], steps=20)
    assert len(configs) == 2 * 2 * 3 * 2 * 1 * 2 == 48
    assert len({c.key for c in configs}) == 48 and all(isinstance(c, RunConfig) for c in configs)
    assert all(c.train.steps == 20 for c in configs)
    assert [c.knowledge.answer_overlap for c in configs[:2]] == [0.0, 1.0]  # last axis varies fastest
    assert axes_of(configs[1]) == {**axes_of(configs[0]), "answer_overlap": 1.0}
    # a preset is a base: axes not given keep its values; the key is RunConfig.key
    tiny = expand_grid("tiny", seeds=[3, 4])
    assert tiny[0] == RunConfig.from_preset("tiny", seed=3) and tiny[0].key == RunConfig.from_preset("tiny", seed=3).key
    assert [c.seed for c in tiny] == [3, 4]
    assert expand_grid("tiny", **{"model.init_tilt": [2.0, 4.0]})[1].model.init_tilt == 4.0  # any dotted field
    # duplicates collapse; n_triplets makes bijective sizes
    assert len(expand_grid(kb_sizes=[(16, 4, 16), (16, 4, 16)], seeds=[0, 0])) == 1
    sizes = [axes_of(c)["n_subjects"] for c in expand_grid(n_triplets=[64, 512, 4096], n_relations=8)]
    assert sizes == [8, 64, 512]
    with pytest.raises(ValueError, match="memory"):
        expand_grid(memory="nonsense")
    with pytest.raises(ValueError, match=r"train.n_samples must be in \[1, 1000000\], got 100000000"):
        expand_grid("tiny", n_samples=10**8)  # bounded before any work
    with pytest.raises(TypeError, match="unknown grid arguments"):
        expand_grid(n_pair=3)


def test_first_release_runspec_still_builds_a_runconfig():
    with pytest.deprecated_call(match=r"RunSpec\(\.\.\.\)' is deprecated .* write 'RunConfig\(\.\.\.\)' .* removed in 0\.4"):
        spec = RunSpec(16, 4, 16, answer_overlap=1, n_pairs=2, seed=3, n_samples=64, steps=20)
    with pytest.deprecated_call():  # every construction warns (the alias table, icr_interp._moved.MOVED_ARGS)
        assert spec == RunSpec(16, 4, 16, answer_overlap=1.0, n_pairs=2, seed=3, n_samples=64, steps=20)
        assert RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).key == spec.key
    assert spec.key == "S16-R4-A16-ov1-k2-constructed-n64-seed3-08980e55cb"  # pinned, as in the first release
    config = spec.to_config()
    assert (config.seed, config.task.n_pairs, config.train.n_samples, config.train.steps, config.eval.n_template) == \
        (3, 2, 64, 20, 256)
    assert config == expand_grid(kb_sizes=[(16, 4, 16)], n_pairs=2, seeds=3, n_samples=64, steps=20, n_template=256)[0]
    with pytest.deprecated_call(match=r"write 'expand_grid\(kb_sizes=sizes, \.\.\.\)' .* removed in 0\.4"):
        old = expand_grid([(16, 4, 16), (32, 4, 32)], seeds=[0, 1])  # the first release's positional sizes
    assert old == expand_grid(kb_sizes=[(16, 4, 16), (32, 4, 32)], seeds=[0, 1]) and len(old) == 4


# -------------------------------------------------------- real local sweep
@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory):
    specs = expand_grid("tiny", **TINY)
    out = tmp_path_factory.mktemp("local") / "results.jsonl"
    start = time.perf_counter()
    results = run_sweep(specs, out, executor="local", workers=2, progress=False)
    print(f"\nlocal sweep of {len(specs)} runs: {time.perf_counter() - start:.1f} s")
    return specs, out, results


def test_local_sweep_writes_one_line_per_run(local_sweep, tmp_path):
    specs, out, results = local_sweep
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    on_disk = {r["key"]: r for r in map(json.loads, lines)}
    assert set(on_disk) == {s.key for s in specs}
    assert [r["key"] for r in results] == [s.key for s in specs]  # returned in spec order
    for r in results:
        assert 0.0 <= r["accuracy"] <= 1.0
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["n_triplets"] == 64 and r["construction"] == "pair" and flat(r)["steps"] == 20
        assert RunConfig.from_dict(r["config"]).key == r["key"]
        assert abs(sum(r["query_attention"]) - 1.0) < 1e-5
        if importlib.util.find_spec("icr_interp.analysis.scoring.templates") is not None:
            names = ("pairwise", "balance", "pair_mass")
            assert all(0.0 <= r[n] <= 1.0 and 0.0 <= r[f"mean_row_{n}"] <= 1.0 for n in names)
            assert r["best"] in ("pairwise", "answers", "subjects", "uniform", "sink")
    # rerunning the finished sweep runs nothing and returns the same results
    assert run_sweep(specs, out, workers=2, progress=False, run_fn=explode) == results
    # CSV: one row per run
    to_csv(results, tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [float(row["accuracy"]) for row in rows] == [r["accuracy"] for r in results]
    assert [int(row["seed"]) for row in rows] == [0, 1] and "config" not in rows[0]
    assert json.loads(rows[0]["query_attention"]) == results[0]["query_attention"]


def test_run_one_is_deterministic_in_process(local_sweep):
    specs, _, results = local_sweep
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers
    try:
        again = run_one(specs[0])
        from icr_interp import run

        direct = run(specs[0]).metrics  # the sweep's numbers are icr_interp.run's
    finally:
        torch.set_num_threads(threads)
    assert (again["accuracy"], again["loss"]) == (results[0]["accuracy"], results[0]["loss"])
    assert (direct["accuracy"], direct["loss"]) == (results[0]["accuracy"], results[0]["loss"])


# ----------------------------------------------------------------- resume
def test_resume_after_failures_reruns_only_failed(tmp_path, monkeypatch):
    monkeypatch.setenv(MARKER_ENV, str(tmp_path))
    (tmp_path / "fail").touch()
    specs, out = _fake_specs(4), tmp_path / "r.jsonl"
    with pytest.raises(SweepError) as err, pytest.warns(UserWarning, match="will rerun"):
        run_sweep(specs, out, workers=0, progress=False, run_fn=fake_run)
    assert list(err.value.failures) == [specs[1].key]
    # one line per failure, naming the exception and where it was raised -- no squashed traceback
    assert err.value.failures[specs[1].key].startswith("RuntimeError: injected failure (at test_sweep.py:")
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    assert len(out.read_text().splitlines()) == 3  # the others were recorded
    (tmp_path / "fail").unlink()
    results = run_sweep(specs, out, workers=0, progress=False, run_fn=fake_run)
    calls = _calls(tmp_path)
    assert {k: calls.count(k) for k in calls} == {s.key: 2 if s.seed == 1 else 1 for s in specs}
    assert sorted(r["key"] for r in load_results(out)) == sorted(s.key for s in specs)  # each key once
    assert [r["accuracy"] for r in results] == [0.0, 0.1, 0.2, 0.3]


def test_resume_after_sigkill_mid_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv(MARKER_ENV, str(tmp_path))
    specs, out = _fake_specs(6), tmp_path / "r.jsonl"
    env = dict(os.environ, ICR_SWEEP_TEST_SLEEP="0.3")
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
              "import test_sweep as t\nfrom icr_interp.experiments.sweep import run_sweep\n"
              f"run_sweep(t._fake_specs(6), {str(out)!r}, workers=0, progress=False, run_fn=t.fake_run)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and len(out.read_text().splitlines()) >= 2):
            assert proc.poll() is None, "sweep subprocess ended before it was killed"
            assert time.monotonic() < deadline, "sweep subprocess wrote nothing"
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep (and any worker it started)
    finally:
        proc.wait()
    finished = [r["key"] for r in load_results(out)]
    assert 2 <= len(finished) < 6
    run_sweep(specs, out, workers=0, progress=False, run_fn=fake_run)
    calls = _calls(tmp_path)
    assert all(calls.count(k) == 1 for k in finished)  # finished runs were not redone
    assert sorted(r["key"] for r in load_results(out)) == sorted(s.key for s in specs)


def test_truncated_last_line_is_dropped_and_file_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv(MARKER_ENV, str(tmp_path))
    specs, out = _fake_specs(3), tmp_path / "r.jsonl"
    run_sweep(specs[:1], out, workers=0, progress=False, run_fn=fake_run)
    with out.open("a") as f:  # a kill in the middle of writing specs[1]'s line
        f.write(json.dumps(dict(key=specs[1].key, accuracy=0.1))[:17])
    with pytest.warns(UserWarning, match="truncated"):
        assert [r["key"] for r in load_results(out)] == [specs[0].key]
    with pytest.warns(UserWarning, match="truncated"):
        run_sweep(specs, out, workers=0, progress=False, run_fn=fake_run)
    assert _calls(tmp_path) == [s.key for s in specs]
    text = out.read_text()
    assert text.endswith("\n") and [json.loads(line)["key"] for line in text.splitlines()] == [s.key for s in specs]
    # damage anywhere but the last line is not a kill mid-write: refuse to guess
    out.write_text('{"key": "x", "accuracy": 1}\n{"key": \n{"key": "y", "accuracy": 1}\n')
    with pytest.raises(ValueError, match="damaged"):
        run_sweep(specs, out, workers=0, progress=False, run_fn=fake_run)


@pytest.mark.parametrize("line, fragment", [("null", "expected a JSON object (a run's record), got null"),
                                            ("[]", "got list"), ('{"key": "k"}', "record k has no numeric 'accuracy'"),
                                            ('{"accuracy": 0.5}', "record has no run 'key'")])
def test_valid_json_that_is_not_a_record_is_one_line_naming_file_and_line(tmp_path, monkeypatch, line, fragment):
    monkeypatch.setenv(MARKER_ENV, str(tmp_path))
    out = tmp_path / "r.jsonl"
    out.write_text('{"key": "a", "accuracy": 0.5}\n' + line + "\n")
    for call in (lambda: load_results(out), lambda: run_sweep(_fake_specs(1), out, workers=0, progress=False,
                                                               run_fn=fake_run)):
        with pytest.raises(ResultsError) as info:
            call()
        assert str(info.value) == f"{out}:2: {fragment}" or (fragment in str(info.value)
                                                             and str(info.value).startswith(f"{out}:2: "))
    assert _calls(tmp_path) == []  # refused before any run


def test_two_sweeps_on_one_file_record_each_run_once(tmp_path, monkeypatch):
    """Two sweeps started together (threads: flock excludes separate opens even in one process)."""
    monkeypatch.setenv(MARKER_ENV, str(tmp_path))
    monkeypatch.setenv("ICR_SWEEP_TEST_SLEEP", "0.05")
    specs, out, waited = _fake_specs(3), tmp_path / "c.jsonl", []
    threads = [threading.Thread(target=run_sweep, args=(specs, out),
                                kwargs=dict(workers=0, progress=False, run_fn=fake_run, log=waited.append))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    keys = [r["key"] for r in load_results(out)]
    assert sorted(keys) == sorted(s.key for s in specs) and len(_calls(tmp_path)) == 3  # each run once
    assert len(waited) == 1 and "another process holds its lock" in waited[0]
    with locks.FileLock(out):  # a writer that must not wait exits with one line
        with pytest.raises(locks.LockBusy, match="is locked by another process"):
            run_sweep(specs, out, workers=0, progress=False, run_fn=fake_run, wait=False)


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_a_killed_sweep(tmp_path, monkeypatch):
    monkeypatch.setenv(MARKER_ENV, str(tmp_path))
    env = dict(os.environ, ICR_SWEEP_TEST_SLEEP="60")
    script = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
              "import test_sweep as t\nfrom icr_interp.experiments.sweep import run_sweep\n"
              f"run_sweep(t._fake_specs(2), {str(tmp_path / 'r.jsonl')!r}, workers=2, progress=False, "
              "run_fn=t.fake_run)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 240
        while len(_calls(tmp_path)) < 2:  # both workers are inside a run
            assert proc.poll() is None and time.monotonic() < deadline, "the sweep did not start its workers"
            time.sleep(0.1)
        kids = _children(proc.pid)
        assert len(kids) >= 2
        os.kill(proc.pid, signal.SIGKILL)  # the sweep only, not its process group
    finally:
        proc.wait()
    deadline = time.monotonic() + 20
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)], "orphaned worker processes"


# -------------------------------------------------------------------- ray
def test_ray_missing_gives_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install icr_interp\[ray\]"):
        run_sweep(_fake_specs(1), tmp_path / "r.jsonl", executor="ray", progress=False, run_fn=explode)


def test_ray_sweep_equals_local(local_sweep, tmp_path):
    ray = pytest.importorskip("ray")
    specs, _, local = local_sweep
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        start = time.perf_counter()
        remote = run_sweep(specs, tmp_path / "ray.jsonl", executor="ray", progress=False)
        print(f"\nray sweep of {len(specs)} runs: {time.perf_counter() - start:.1f} s (Ray already up)")
        assert ray.is_initialized()  # an instance we did not start is left running
    finally:
        ray.shutdown()
    strip = lambda r: {k: v for k, v in r.items() if k not in TIMING_FIELDS}  # noqa: E731
    assert [strip(r) for r in remote] == [strip(r) for r in local]
    assert len(load_results(tmp_path / "ray.jsonl")) == 2


def test_records_are_versioned_and_old_ones_migrate(tmp_path):
    from icr_interp.experiments.sweep import store

    path = tmp_path / "r.jsonl"
    old = {"key": "a", "accuracy": 0.5}  # written before records carried a format
    path.write_text(json.dumps(old) + "\n")
    assert load_results(path) == [{**old, "format": store.FORMAT}]
    with store.ResultsStore(path) as s:
        s.append({"key": "b", "accuracy": 1.0})
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == old and lines[1]["format"] == store.FORMAT == "icr_interp-sweep/1"  # old lines untouched
    path.write_text(json.dumps({**old, "format": "icr_interp-sweep/9"}) + "\n")
    with pytest.raises(ResultsError, match=r"r.jsonl:1: record format 'icr_interp-sweep/9' is not one") as info:
        load_results(path)
    assert "\n" not in str(info.value)
