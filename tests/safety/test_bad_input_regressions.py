"""Issue 20, the second reliability pass: one regression test per item (storage, sweeps, knowledge bases, configs).

Each test reproduces the defect as the issue describes it (it failed before the fix).  The hypothesis tests
cover the new shapes of damage: loads interleaved with in-place saves, repeated CSV headers, results files
without a final newline.  The long concurrency measurement is ``benchmarks/bench_concurrent_load.py``.
"""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icr_interp.experiments import checkpoint_analysis as probing
from icr_interp.experiments import fits, n_star
from icr_interp.experiments.sweep import expand_grid, load_results, run_sweep, summary_path
from icr_interp.pipeline.config import RunConfig
from icr_interp.pipeline.runner import build
from icr_interp.storage import atomic
from icr_interp.storage.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from icr_interp.storage.checkpoint import files as checkpoint_files
from icr_interp.storage.checkpoint.migrations import FORMAT, MIGRATIONS
from icr_interp.task.knowledge import KnowledgeBase

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parents[1] / "data"
SETTINGS = dict(max_examples=10, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def models():
    """Two tiny models with different weights for one task."""
    config = RunConfig.from_preset("tiny", seed=4)
    task, a = build(config)
    _, b = build(config)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(0.01)
    return task, a, b


@pytest.fixture(scope="module")
def saved(models, tmp_path_factory) -> Path:
    task, a, _ = models
    return save_checkpoint(tmp_path_factory.mktemp("saved") / "ck", a, task, note="a")


def one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert text and "\n" not in text
    return text


def fake_run(config) -> dict:
    """A sweep run without training (picklable, top level)."""
    return dict(config=config.to_dict(), accuracy=0.5, loss=float("nan"))


# ------------------------------------------------------------------ 1, 2, 3, 18: sweeps keep their results
def test_1_summary_csv_is_never_the_results_file(tmp_path):
    out = tmp_path / "r.csv"
    assert summary_path(out) == tmp_path / "r.summary.csv" and summary_path(tmp_path / "r.jsonl") == tmp_path / "r.csv"
    configs = expand_grid("tiny", seeds=[0, 1])
    run_sweep(configs, out, workers=0, progress=False, run_fn=fake_run, summary=summary_path(out))
    assert [r["key"] for r in load_results(out)] == [c.key for c in configs]  # the records survive
    run_sweep(configs, out, workers=0, progress=False, run_fn=fake_run, summary=summary_path(out))  # resumes
    assert len(load_results(out)) == 2


def test_2_a_users_csv_beside_the_results_is_refused_before_any_run(tmp_path):
    out, mine = tmp_path / "X.jsonl", tmp_path / "X.csv"
    mine.write_text("my,own\n1,2\n")
    with pytest.raises(ValueError, match="refusing to overwrite .*X.csv: it was not written by a sweep") as info:
        run_sweep(expand_grid("tiny"), out, workers=0, progress=False, run_fn=fake_run, summary=summary_path(out))
    one_line(info)
    assert mine.read_text() == "my,own\n1,2\n" and not out.exists()
    mine.unlink()
    run_sweep(expand_grid("tiny"), out, workers=0, progress=False, run_fn=fake_run, summary=summary_path(out))
    run_sweep(expand_grid("tiny", seeds=[1]), out, workers=0, progress=False, run_fn=fake_run,
              summary=summary_path(out))  # our own summary is replaced...
    assert len(mine.read_text().splitlines()) == 3  # ...by the union of both sweeps (item 18)
    mine.write_text(mine.read_text() + "edited\n")
    with pytest.raises(ValueError, match="not written by a sweep"):  # ...but not once the user edited it
        run_sweep(expand_grid("tiny"), out, workers=0, progress=False, run_fn=fake_run, summary=summary_path(out))


@given(n_old=st.integers(1, 4), newline=st.booleans(), crlf=st.booleans())
@settings(**SETTINGS)
def test_3_results_without_a_final_newline_stay_readable(tmp_path_factory, n_old, newline, crlf):
    out = tmp_path_factory.mktemp("r") / "r.jsonl"
    old = [json.dumps(dict(key=f"old{i}", accuracy=0.25)) for i in range(n_old)]
    out.write_text(("\r\n" if crlf else "\n").join(old) + ("\n" if newline else ""))
    run_sweep(expand_grid("tiny"), out, workers=0, progress=False, run_fn=fake_run)
    keys = [r["key"] for r in load_results(out)]
    assert keys == [f"old{i}" for i in range(n_old)] + [expand_grid("tiny")[0].key]
    run_sweep(expand_grid("tiny", seeds=[1]), out, workers=0, progress=False, run_fn=fake_run)  # still readable
    assert len(load_results(out)) == n_old + 2


def test_18_results_are_strict_json_and_a_cut_utf8_tail_is_trimmed(tmp_path):
    out = tmp_path / "r.jsonl"
    run_sweep(expand_grid("tiny"), out, workers=0, progress=False, run_fn=fake_run)

    def refuse(name):
        raise ValueError(name)

    record = json.loads(out.read_text().splitlines()[0], parse_constant=refuse)  # no bare NaN
    assert record["loss"] is None
    with open(out, "ab") as f:
        f.write('{"key": "cut", "accuracy": 0.5, "name": "é'.encode()[:-1])  # killed inside a character
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        run_sweep(expand_grid("tiny", seeds=[1]), out, workers=0, progress=False, run_fn=fake_run)
    assert len(load_results(out)) == 2 and out.read_bytes().endswith(b"\n")


SLOW_SWEEP = """
import concurrent.futures as cf, sys, time
from icr_interp.experiments.sweep import expand_grid, run_sweep
real = cf.ProcessPoolExecutor.submit
def submit(self, *a, **k):
    print("submitted", flush=True)
    return real(self, *a, **k)
cf.ProcessPoolExecutor.submit = submit
run_sweep(expand_grid("tiny", seeds=[0, 1]), sys.argv[1], workers=2, progress=False)
"""


def test_18_a_sweep_killed_during_worker_start_up_leaves_nothing_running_or_warning(tmp_path):
    """kill -9 while the workers import torch: they die at once, and no "leaked semaphore" warning follows."""
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-c", SLOW_SWEEP, str(tmp_path / "r.jsonl")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "submitted"
        time.sleep(0.3)  # the workers are being spawned: importing, not yet running
        os.kill(proc.pid, signal.SIGKILL)
        t0 = time.monotonic()
        err = proc.stderr.read()  # EOF once every process holding the pipe (workers, tracker) has exited
        waited = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait()
    assert "leaked semaphore" not in err and "Traceback" not in err, err
    assert waited < 10, f"workers lingered {waited:.1f} s"


def test_17_a_damaged_line_is_named_and_the_file_left_alone(tmp_path):
    out = tmp_path / "r.jsonl"
    good = json.dumps(dict(key="a", accuracy=0.5))
    out.write_text(f"{good}\n\n{good[:-3]}\n{good}\n")
    before = out.read_bytes()
    with pytest.raises(ValueError) as info:
        run_sweep(expand_grid("tiny"), out, workers=0, progress=False, run_fn=fake_run)
    text = one_line(info)
    assert f"{out}:3: damaged result line" in text and "remove" not in text and "leaves the file as it is" in text
    assert out.read_bytes() == before


# ------------------------------------------------------------------ 5, 6, 11, 15, 17: checkpoints
def test_5_a_checkpoint_in_a_newer_format_is_not_replaced_without_force(models, saved, tmp_path):
    task, _, b = models
    for edit in ({"format": "icr_interp-checkpoint/99"}, {"library_version": "9.0.0"}):
        ck = Path(shutil.copytree(saved, tmp_path / f"ck{len(list(tmp_path.iterdir()))}"))
        config = json.loads((ck / "config.json").read_text())
        (ck / "config.json").write_text(json.dumps({**config, **edit}))
        before = {p.name: p.read_bytes() for p in ck.iterdir()}
        with pytest.raises(CheckpointError, match="written (in format|by icr_interp 9.0.0).*--force") as info:
            save_checkpoint(ck, b, task)
        one_line(info)
        assert {p.name: p.read_bytes() for p in ck.iterdir()} == before
        save_checkpoint(ck, b, task, force=True)
        assert load_checkpoint(ck).config["format"] == FORMAT


def test_6_loading_parses_the_very_bytes_it_hashed(saved, monkeypatch):
    """The weights are read once: safetensors never opens the file by path after the digest was checked."""
    def by_path(*args, **kwargs):
        raise AssertionError("weights parsed from a second open of the file")

    monkeypatch.setattr(safetensors.torch, "load_file", by_path)
    reads = []
    real = checkpoint_files._read_regular
    monkeypatch.setattr(checkpoint_files, "_read_regular", lambda f, *a: reads.append(Path(f).name) or real(f, *a))
    load_checkpoint(saved)
    assert reads.count("model.safetensors") == 1 and reads.count("config.json") == 1


@given(step=st.integers(0, 3), second_save=st.booleans())
@settings(**SETTINGS)
def test_6_a_load_at_any_step_of_an_in_place_save_gets_matching_weights(models, saved, tmp_path_factory, step,
                                                                         second_save):
    """Interleave a load with each step of a save (and of a second save): it returns a or b, never a mixture."""
    task, a, b = models
    ck = Path(shutil.copytree(saved, tmp_path_factory.mktemp("ck") / "ck"))
    tokens = task.sample(4, seed=0).tokens
    expected = {"a": a(tokens), "b": b(tokens)}
    seen, real, calls = [], os.replace, []

    def replace(src, dst):
        real(src, dst)
        calls.append(dst)
        if len(calls) - 1 == step:
            try:
                ck_now = load_checkpoint(ck)
                seen.append((ck_now.metrics["note"], ck_now.model(tokens)))
            except CheckpointError as e:
                seen.append(("failed", str(e)))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(atomic.os, "replace", replace)
        save_checkpoint(ck, b, task, note="b")
        if second_save:
            save_checkpoint(ck, a, task, note="a")
    for note, out in seen:
        assert note in ("a", "b") and torch.equal(out, expected[note]), (note, out)


def test_6_loads_during_repeated_in_place_saves_never_return_wrong_weights(tmp_path):
    """The short version of benchmarks/bench_concurrent_load.py: a writer saves in place, we load 60 times."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import bench_concurrent_load
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    r = bench_concurrent_load.measure(60, tmp_path)
    assert r["wrong"] == 0 and r["other"] == 0 and r["right"] + r["failed"] == 60, r
    assert r["right"] >= 30 and r["saves"] > 0, r  # the loads ran while saves were happening


def test_11_wrong_typed_knowledge_tables_and_disagreeing_run_configs_are_refused(models, saved, tmp_path):
    task, a, _ = models
    edits = {
        "float": (lambda c: c["knowledge_base"]["table"][0].__setitem__(0, 3.9), "holds 3.9; answer ids are integers"),
        "bool": (lambda c: c["knowledge_base"]["table"][0].__setitem__(0, True), "holds True"),
        "name": (lambda c: c["knowledge_base"]["subjects"].__setitem__(0, 7), "subjects must be a list of strings"),
        "run": (lambda c: c["run_config"]["task"].__setitem__("n_pairs", 3), "run_config disagrees"),
    }
    ck0 = save_checkpoint(tmp_path / "with-run", a, task, run_config=RunConfig.from_preset("tiny", seed=4))
    for name, (edit, fragment) in edits.items():
        ck = Path(shutil.copytree(ck0, tmp_path / name))
        config = json.loads((ck / "config.json").read_text())
        edit(config)
        (ck / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(ck)
        assert fragment in one_line(info), name


def test_15_a_config_asking_for_a_huge_model_is_refused_before_building(saved, tmp_path, monkeypatch):
    import icr_interp.model.builder as builder

    monkeypatch.setattr(builder, "model_from_config", lambda *a, **k: pytest.fail("built before the check"))
    for change, fragment in (({"d_model": 8192, "n_heads": 64}, "config implies d_model 8192"),
                             ({"n_heads": 64}, "n_heads 64")):
        ck = Path(shutil.copytree(saved, tmp_path / str(len(list(tmp_path.iterdir())))))
        config = json.loads((ck / "config.json").read_text())
        config["model"].update(change)
        (ck / "config.json").write_text(json.dumps(config))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(ck)
        assert fragment in one_line(info)


def test_15_size_limits_name_the_limit_and_the_knob(monkeypatch, tmp_path, models):
    task = models[0]
    for make in (lambda: RunConfig().with_overrides(**{"knowledge.n_answers": 10**12}),
                 lambda: RunConfig().with_overrides(**{"knowledge.n_subjects": 10**7, "knowledge.n_relations": 1,
                                                       "knowledge.n_answers": 16}),
                 lambda: KnowledgeBase.random(16, 4, 10**12),
                 lambda: probing.probe_prompts(task, 3_000_000, 0)):
        with pytest.raises(ValueError) as info:
            make()
        assert "over the limit of" in one_line(info) and "ICR_INTERP_MAX_BYTES" in str(info.value)
    rows = "\n".join(f"s{i},r{i},a{i}" for i in range(3000))  # 3000 new subjects and relations: a 72 MB table
    (tmp_path / "kb.csv").write_text("subject,relation,answer\n" + rows + "\n")
    monkeypatch.setenv("ICR_INTERP_MAX_BYTES", "32M")
    monkeypatch.setattr(torch, "full", lambda *a, **k: pytest.fail("allocated before the check"))
    with pytest.raises(ValueError, match="3000 subjects x 3000 relations needs about .* over the limit of 32 MiB"):
        KnowledgeBase.from_csv(tmp_path / "kb.csv")
    monkeypatch.setenv("ICR_INTERP_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="ICR_INTERP_MAX_BYTES must be a number of bytes"):
        KnowledgeBase.random(4, 2, 4)


def test_17_config_json_that_is_not_a_file_is_named_so(saved, tmp_path):
    ck = Path(shutil.copytree(saved, tmp_path / "ck"))
    (ck / "config.json").unlink()
    (ck / "config.json").mkdir()
    with pytest.raises(CheckpointError, match="config.json is not a regular file \\(it is a folder\\)"):
        load_checkpoint(ck)
    (ck / "config.json").rmdir()
    os.mkfifo(ck / "config.json")
    with pytest.raises(CheckpointError, match="is not a regular file \\(it is a FIFO\\)"):
        load_checkpoint(ck)  # and does not block reading it


# ------------------------------------------------------------------ 12, 16, 17: paths checked before the work
def _as_nobody(fn) -> int:
    """Run ``fn`` in a child process as an unprivileged user (root ignores permissions); its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if os.getuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
            code = fn()
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_12_paths_the_os_refuses_are_one_line_errors(models, tmp_path):
    from icr_interp.cli import _check_results_file

    task, a, _ = models
    for bad, fragment in ((tmp_path / "a\x00b", "NUL byte"), (tmp_path / ("n" * 300), "bytes long; this filesystem"),
                          (tmp_path / ("n" * 300) / "ck", "bytes long")):
        for call in (lambda: save_checkpoint(bad, a, task), lambda: load_checkpoint(bad)):
            with pytest.raises(CheckpointError) as info:
                call()
            assert fragment in one_line(info)
        with pytest.raises(probing.ProbeInputError, match=fragment):
            probing.output_dir(bad, False, "patching", tmp_path)
        with pytest.raises(ValueError, match=fragment):  # icr-interp sweep --out
            _check_results_file(Path(str(bad) + ".jsonl"))
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(locked, 0o000)

    def refused() -> int:
        try:
            save_checkpoint(locked / "ck", a, task)
        except CheckpointError as e:
            return 0 if "\n" not in str(e) and "ermission denied" in str(e) else 3
        return 4

    try:
        assert _as_nobody(refused) == 0
    finally:
        os.chmod(locked, 0o755)


def test_16_output_shapes_that_used_to_fail_after_the_work(models, tmp_path, monkeypatch):
    task, a, _ = models
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "link").symlink_to(empty)
    save_checkpoint(tmp_path / "link", a, task)  # a symlink to an empty folder: written into it
    assert (tmp_path / "link").is_symlink() and sorted(os.listdir(empty)) == ["config.json", "model.safetensors"]
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    save_checkpoint(".", a, task)  # --out . in an empty folder
    assert load_checkpoint(".").task.kb.n_subjects == task.kb.n_subjects
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(probing.ProbeInputError, match="dangling symbolic link"):
        probing.output_dir(tmp_path / "dangling", True, "patching", tmp_path)
    from icr_interp.cli import _check_results_file

    (tmp_path / "X.csv").mkdir()
    with pytest.raises(ValueError, match="X.csv exists and is not a file"):
        _check_results_file(tmp_path / "X.jsonl")


def test_17_dotdot_after_a_missing_folder_creates_nothing(models, tmp_path):
    task, a, _ = models
    with pytest.raises(CheckpointError, match="nothere does not exist") as info:
        save_checkpoint(tmp_path / "nothere" / ".." / "ck", a, task)
    one_line(info)
    assert list(tmp_path.iterdir()) == []


def test_17_a_csv_path_that_is_a_folder_is_named_so(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not a file"):
        KnowledgeBase.from_csv(tmp_path)


# ------------------------------------------------------------------ 8: repeated headers
@given(facts=st.lists(st.tuples(*[st.sampled_from(["x", "y", "z", "w"])] * 2), min_size=2, max_size=8,
                      unique_by=lambda f: f[0]),
       order=st.permutations(["subject", "relation", "answer"]), cut=st.integers(1, 7), newline=st.booleans())
@settings(**SETTINGS)
def test_8_a_header_repeated_mid_csv_is_not_a_fact(tmp_path_factory, facts, order, cut, newline):
    """`cat a.csv b.csv`: the second header (its columns in any order) is read as a header, not loaded."""
    facts = [(s, "r", a) for s, a in facts]
    cut = min(cut, len(facts) - 1)

    def part(rows, columns) -> str:
        index = {"subject": 0, "relation": 1, "answer": 2}
        lines = [",".join(columns)] + [",".join(f[index[c]] for c in columns) for f in rows]
        return "\n".join(lines) + "\n"

    text = part(facts[:cut], ["subject", "relation", "answer"]) + part(facts[cut:], list(order))
    path = tmp_path_factory.mktemp("kb") / "kb.csv"
    path.write_text(text if newline else text.rstrip("\n"))
    kb = KnowledgeBase.from_csv(path)
    assert kb.n_triplets == len(facts) and "subject" not in kb.subjects and "relation" not in kb.relations


# ------------------------------------------------------------------ 14a: strings for numbers
def test_14a_a_string_for_a_number_is_a_one_line_value_error():
    for call in (lambda: RunConfig().with_overrides(**{"knowledge.answer_overlap": "0.5"}),
                 lambda: expand_grid("tiny", answer_overlap=["0.5"]),
                 lambda: expand_grid("tiny", n_samples=["64"]),
                 lambda: RunConfig.from_dict({"task": {"n_pairs": "2"}})):
        with pytest.raises(ValueError) as info:
            call()
        assert "must be" in one_line(info) and "'" in str(info.value)


# ------------------------------------------------------------------ 18: layering
def test_18a_legacy_checkpoints_load_bit_for_bit():
    assert [m.source for m in MIGRATIONS] == ["icr_interp-checkpoint/1"] and FORMAT == "icr_interp-checkpoint/2"
    for name in ("legacy_tiny_pair", "legacy_tiny_mixed"):
        assert json.loads((DATA / name / "config.json").read_text())["format"] == "icr_interp-checkpoint/1"
        expected = safetensors.torch.load_file(DATA / f"{name}.expected.safetensors")
        model = load_checkpoint(DATA / name).model
        model.eval()
        with torch.no_grad():
            assert torch.equal(model(expected["tokens"]), expected["logits"]), name


def test_18a_no_key_sniffing_outside_the_migration_rules():
    schema = (REPO / "icr_interp" / "storage" / "checkpoint" / "schema.py").read_text()
    assert "2**24" not in schema and "LEGACY" not in schema and "mixed_vote_gain" not in schema


def _imports(module: str) -> set[str]:
    tree = ast.parse((REPO / "icr_interp" / "pipeline" / f"{module}.py").read_text())
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | \
        {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_18b_pipeline_imports_run_one_way():
    assert not {"icr_interp.pipeline.presets", "icr_interp.pipeline.runner"} & _imports("config")
    assert "icr_interp.pipeline.presets" not in _imports("runner")
    assert RunConfig.from_preset("paper").name == "paper"
    code = "from icr_interp.pipeline.config import RunConfig; print(RunConfig.from_preset('tiny').name)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "tiny", out.stderr


def test_18c_summary_and_to_dict_show_what_applies_and_keys_stay():
    countries = RunConfig().with_overrides(**{"knowledge.builtin": "countries"})
    assert "built-in 'countries'" in countries.summary() and "64 subjects" not in countries.summary()
    assert countries.to_dict()["knowledge"] == {"builtin": "countries"}
    csv = RunConfig().with_overrides(**{"knowledge.csv": "facts.csv"})
    assert csv.to_dict()["knowledge"] == {"csv": "facts.csv"} and "facts from facts.csv" in csv.summary()
    for config in (countries, csv, RunConfig.from_preset("tiny").with_overrides(**{"knowledge.csv": "f.csv"})):
        assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))).key == config.key
    assert RunConfig().key == "c7a62df1dcc776f9" and countries.key == "414c30c6a4db4cee"  # as before the change


def test_18d_run_config_checks_training_sizes_with_train_configs_rule():
    with pytest.raises(ValueError, match="train.steps must be an integer >= 0, got -1"):
        RunConfig().with_overrides(**{"train.steps": -1})
    with pytest.raises(ValueError, match="train.batch_size must be an integer >= 1, got 0"):
        RunConfig().with_overrides(**{"train.batch_size": 0})


def test_18e_one_is_checkpoint(saved, tmp_path):
    assert probing.is_checkpoint is checkpoint_files.is_checkpoint and probing.is_checkpoint(saved)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert not probing.is_checkpoint(tmp_path / "hf")


def test_18f_storage_split_keeps_fsio_importable():
    """The old fsio facade is an alias of atomic now (tests/storage/test_atomic.py checks it, with its warning)."""
    assert all(len((REPO / "icr_interp" / "storage" / f).read_text().splitlines()) < 400
               for f in ("atomic.py", "locks.py", "jsonio.py", "preflight.py"))


@given(hits=st.dictionaries(st.sampled_from([1, 2, 4, 8, 16]), st.booleans(), min_size=1))
@settings(max_examples=30, deadline=None, derandomize=True)
def test_18g_one_definition_of_n_star(hits):
    """The fixed grid (fits) and the search (n_star) give the same n* on the same runs."""
    records = [dict(config={"seed": 0, "knowledge": {"n_subjects": 4, "n_relations": 2, "n_answers": 4},
                            "train": {"n_samples": n}}, n_triplets=8, accuracy=1.0 if h else 0.0)
               for n, h in hits.items()]
    (row,) = fits.sample_complexity(records, target=0.95)
    runs = {n: dict(accuracy=1.0 if h else 0.0) for n, h in hits.items()}
    rule = n_star.SearchRule(n_max=max(hits))
    state = n_star.n_star(runs, "accuracy", rule)
    assert n_star.smallest_hit is fits.smallest_hit
    assert (row["n_star"], row["non_monotone"]) == fits.smallest_hit(hits)
    if state["resolved"] and state["reached"]:
        assert state["n_star"] == row["n_star"] and state["non_monotone"] == row["non_monotone"]


# ------------------------------------------------------------------ 20: heads.py stores checkpoints
def test_20_heads_reuse_stores_checkpoints_and_never_unpickles(tmp_path, models):
    from icr_interp.experiments import shapes as heads  # what case_studies/heads.py --reuse calls

    task, model, _ = models
    path = heads.model_path(tmp_path, 16, 4, 2, 0, model.cfg.n_layers, model.cfg.n_heads)
    assert heads.load_state(path, model.cfg.n_layers, model.cfg.n_heads) is None
    heads.save_state(path, model, task, accuracy=1.0)
    assert json.loads((path / "config.json").read_text())["format"].startswith("icr_interp-checkpoint/")
    loaded = heads.load_state(path, model.cfg.n_layers, model.cfg.n_heads)
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="delete it to retrain") as info:  # another shape under that name
        heads.load_state(path, model.cfg.n_layers + 1, model.cfg.n_heads)
    one_line(info)
    weights = next(path.glob("*.safetensors"))
    torch.save(model.state_dict(), weights)  # a pickle in place of the weights is refused, not run
    with pytest.raises(ValueError, match="retrain") as info:
        heads.load_state(path, model.cfg.n_layers, model.cfg.n_heads)
    one_line(info)
    for source in (REPO / "case_studies" / "heads.py", REPO / "icr_interp" / "experiments" / "shapes.py"):
        assert not re.search(r"(?<!safetensors\.)torch\.load\(", source.read_text())
