"""The probe scripts run on a saved checkpoint: exit codes, files, numbers, one-line errors."""

import base64
import csv
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from icr_interp import ICRecallTask, KnowledgeBase, build_model, load_checkpoint, save_checkpoint

from icr_interp.experiments import checkpoint_analysis as probing
from icr_interp.seeds import derive_seed
from icr_interp.training.trainer import evaluate
import _scripts
from _browser import REMOTE, offline_chromium, open_offline

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPTS = ("patching.py", "ablate.py", "score_attention.py")


def probe_cli(script: str, *args, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The script run as a command (a new interpreter): for what only the real command line shows."""
    return subprocess.run([sys.executable, str(REPO / "probes" / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def load_probe(script: str):
    return _scripts.load("probes", script)


def probe(script: str, *args) -> subprocess.CompletedProcess:
    """The script's ``main`` run in this process (no interpreter start-up), its output captured."""
    return _scripts.run_main("probes", script, *args)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr
    return result


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 200 and height > 200


def numbers(values) -> list[float]:
    flat = [x for row in values for x in (row if isinstance(row, list) else [row])]
    assert all(isinstance(x, (int, float)) for x in flat)
    return flat


def in_process(script: str, *args, capsys) -> tuple[int, str, str]:
    """Run a probe's ``main`` in this process (no interpreter start-up): exit code, stdout, stderr."""
    module = load_probe(script)
    capsys.readouterr()
    code = module.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ------------------------------------------------------------ patching.py
@pytest.fixture(scope="module")
def patched(reference_checkpoint, tmp_path_factory):
    """``patching.py`` run once on the reference checkpoint, into a non-empty --out (hence --force)."""
    out = tmp_path_factory.mktemp("patched") / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    (out / "patching.json").write_text("{}")  # replaced by --force, which says so
    result = ok(probe("patching.py", reference_checkpoint, "--n-prompts", 16, "--seed", 1, "--out", out, "--force",
                      "--eval-prompts", 256))
    return result, out


def test_patching_one_checkpoint(patched):
    result, out = patched
    assert "relation swap" in result.stdout and "verdict: relation inference runs through" in result.stdout
    assert f"replaced (--force) in {out}: patching.json\n" in result.stdout  # old.txt stays, unlisted
    data = json.loads((out / "patching.json").read_text())
    assert {"checkpoint", "n_prompts", "seed", "method", "corruptions", "results"} <= set(data)
    assert data["n_prompts"] == 16 and data["method"] == "exact" and data["corruptions"] == ["relation", "query"]
    assert data["corruption_seed"] == derive_seed(1, "corrupt")
    rel, query = data["results"]["relation"]["by_role"], data["results"]["query"]["by_role"]
    numbers(rel["values"])
    cell = lambda r, comp, role: r["values"][r["components"].index(comp)][r["roles"].index(role)]  # noqa: E731
    assert cell(rel, "blocks.0.hook_resid_pre", "context") > 0.9 and abs(cell(rel, "blocks.0.hook_resid_pre",
                                                                                  "query")) < 1e-6
    assert cell(query, "blocks.0.hook_resid_pre", "query") == pytest.approx(1.0, abs=1e-4)
    assert data["results"]["query"]["pattern_by_role"]["components"] == ["blocks.0.attn.hook_pattern:h0"]
    circuit = json.loads((out / "circuit.json").read_text())
    rows = {r["component"]: r for r in circuit["rows"]}
    assert rows["context"]["relation"] > 0.9 and rows["query"]["lookup"] > 0.9 and rows["stage_II"]["lookup"] > 0.9
    assert abs(rows["query"]["relation"]) < 1e-6 and abs(rows["context"]["lookup"]) < 1e-6
    assert circuit["verdict"].startswith("relation inference runs through attention to the context pairs")
    assert_png(out / "patching.png")
    assert (out / "old.txt").read_text() == "x"  # --force writes beside, never deletes


def png_sizes(page: str) -> list[tuple[int, int]]:
    from PIL import Image

    return [Image.open(io.BytesIO(base64.b64decode(d))).size for d in re.findall(r'src="data:image/png;base64,([^"]+)"',
                                                                                  page)]


def test_patching_writes_a_self_contained_report(patched, reference_checkpoint):
    _, out = patched
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    # accuracy: evaluate() on the held-out stream of the run's seed (none recorded: 0)
    ck = load_checkpoint(reference_checkpoint)
    expected = evaluate(ck.model, ck.task, n_prompts=256, seed=0)
    assert f'<b id="accuracy">{expected["accuracy"]:.4f}</b> (95% interval ' in page
    assert "on 256 fresh held-out prompts (evaluate seed 0)" in page
    assert expected["accuracy"] > 0.9
    # template scores: an HTML table with one row per head, the numbers of score_templates on the same prompts
    from icr_interp import score_templates

    batch, _ = probing.probe_prompts(ck.task, 16, 1)
    scores = score_templates(ck.model, batch).to_dict()
    table = re.search(r'<table class="scores">(.*?)</table>', page, re.DOTALL).group(1)
    assert "scored on 16 prompts" in table and "per_head" not in page
    row = re.findall(r"<td>([^<]*)</td>", table)
    p = scores["p_value"]
    assert row[:8] == ["0*", "0", f"{scores['pairwise']:.3f}", f"{scores['pairwise_null']:.3f}",
                       f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}", f"{scores['balance']:.3f}",
                       f"{scores['pair_mass']:.3f}", scores["best"]]
    # every score beside its null and p-value, and the rule that decided "best" under the table
    assert "<th>null</th>" in table and "<th>p</th>" in table
    assert re.search(r'<p class="rule">best = the template nearest in total variation.*re-pairing null and '
                     r"the adjacency control \(each p &lt;= 0.01\) with effect &gt;= 0.05 in attention mass", page)
    # a cell zero by construction is marked and explained, never "nan"
    assert "zero by construction" in page and ">nan<" not in page
    # no network: nothing fetched, the bundle inline once, heatmaps inline
    assert not REMOTE.search(page) and "unpkg" not in page and not re.search(r"""src=["']?https?:""", page)
    assert page.count("var CircuitsVis=") == 1 and page.count("CircuitsVis.render(") == 3  # prompts 0-2
    sizes = png_sizes(page)
    assert len(sizes) == 2 + 2 and all(w > 300 and h > 200 for w, h in sizes)  # query rows (bars, heatmap), 2 swaps
    # every figure says how many prompts it shows
    for caption in ("prompt 0 of 16", "the first 8 of 16 prompts, then the mean over all 16",
                    "mean query row over 16 prompts", "scored on 16 prompts",
                    "relation swap: mean over 16 prompts", "query swap: mean over 16 prompts",
                    "denoising patching on 16 prompts"):
        assert caption in page, caption
    assert "Verdict: relation inference runs through attention to the context pairs" in page
    # each prompt shown with its hidden relation and answer, the example in the summary too
    assert "example 0: hidden relation" in page and "example 0: answer" in page
    relation = ck.task.kb.relations[int(batch.relations[0])]
    answer = ck.task.vocab.to_str(batch.answers[0])
    assert f"{relation} \u2192 {answer}" in page


@pytest.fixture(scope="module")
def browser():
    yield from offline_chromium()


def test_patching_report_renders_offline_in_headless_chromium(browser, patched, tmp_path):
    from selenium.webdriver.common.by import By

    _, out = patched
    open_offline(browser, out / "report.html")  # network blocked; asserts nothing was fetched
    views = [browser.find_element(By.ID, f"view-{i}") for i in range(3)]  # prompts 0-2, coloured by their row
    assert all("query:" in v.text and "L0H0" in v.text for v in views)
    text = browser.execute_script("return document.body.innerText")
    shown = re.search(r"Held-out accuracy: ([01]\.\d{4}) \(95% interval ([01]\.\d{3})-([01]\.\d{3})\) "
                      r"on 256 fresh held-out prompts", text)
    assert shown and float(shown.group(1)) > 0.9
    assert float(shown.group(2)) <= float(shown.group(1)) <= float(shown.group(3))
    # the prediction rows: one per prompt with its hidden relation and answer, then the mean with its spread
    table = browser.find_element(By.CSS_SELECTOR, "table.rows")
    assert "hidden relation \u2192 answer" in table.text and "over all 16 prompts (\u00b1 s.d.)" in table.text
    assert [c.text for c in table.find_elements(By.CSS_SELECTOR, "th.role")] == (
        ["<bos>"] + [f"{r}{i}" for i in range(1, 5) for r in "sa"] + ["query"])
    # the attended tokens are drawn in strong colour (dark blue pixels)
    import numpy as np
    from PIL import Image

    browser.set_window_size(1100, browser.execute_script("return document.documentElement.scrollHeight") + 50)
    shot = tmp_path / "view.png"
    views[0].screenshot(str(shot))
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).tolist()  # (getdata: deprecated in Pillow)
    assert sum(1 for r, g, b in pixels if b > 200 and r < 120 and g < 120) > 100


def test_patching_attribution_one_corruption(reference_checkpoint, tmp_path):
    out = tmp_path / "attr"
    ok(probe("patching.py", reference_checkpoint, "--n-prompts", 8, "--method", "attribution",
             "--corruption", "query", "--out", out))
    data = json.loads((out / "patching.json").read_text())
    assert data["method"] == "attribution" and list(data["results"]) == ["query"]
    by_role = data["results"]["query"]["by_role"]
    assert by_role["method"] == "attribution" and numbers(by_role["values"])
    # mlp_out at the query is linear in the logits: attribution is exact there.
    i = by_role["components"].index("blocks.0.hook_mlp_out")
    assert by_role["values"][i][by_role["roles"].index("query")] == pytest.approx(1.0, abs=1e-3)
    assert_png(out / "patching.png")
    assert json.loads((out / "circuit.json").read_text())["rows"]  # the circuit summary is always exact


def test_patching_series(reference_checkpoint, tmp_path):
    """Two checkpoints, ordered by the step in their metrics (not their names); hidden leftovers are ignored."""
    series = tmp_path / "run"
    shutil.copytree(reference_checkpoint, series / "a-final")  # metrics step=200
    task = ICRecallTask(KnowledgeBase.random(64, 8, 64, 1.0, seed=0), n_pairs=4)
    save_checkpoint(series / "b-start", build_model(task), task, step=0)
    shutil.copytree(reference_checkpoint, series / ".a-final.old-1234")  # an interrupted save's leftover
    out = tmp_path / "series-out"
    ok(probe("patching.py", series, "--n-prompts", 16, "--out", out))
    data = json.loads((out / "patching_series.json").read_text())
    assert data["names"] == ["b-start", "a-final"] and data["steps"] == [0, 200]
    assert len(data["summaries"]) == 2 and all(len(v) == 2 for v in data["series"].values())
    for values in data["series"].values():
        numbers(values)
    assert data["series"]["context:relation"][1] > 0.9 and data["series"]["query:lookup"] == pytest.approx([1, 1])
    with open(out / "patching_series.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["b-start", "a-final"] and [r["step"] for r in rows] == ["0", "200"]
    assert float(rows[1]["context:relation"]) == pytest.approx(data["series"]["context:relation"][1], rel=1e-5)
    assert_png(out / "patching_series.png")


# ------------------------------------------------------------ ablate.py, score_attention.py
def test_ablate(reference_checkpoint, tmp_path):
    out = tmp_path / "abl"
    result = ok(probe("ablate.py", reference_checkpoint, "--method", "zero", "--n-prompts", 32, "--out", out))
    assert "values at subject positions" in result.stdout
    data = json.loads((out / "ablation.json").read_text())
    assert data["method"] == "zero" and data["n_prompts"] == 32 and data["base_accuracy"] > 0.9
    results = {r["name"]: r for r in data["results"]}
    assert results["values at subject positions"]["accuracy"] < 0.3
    assert results["values at query positions"]["accuracy"] >= data["base_accuracy"] - 0.05
    assert results["blocks.0.mlp.hook_relation"]["accuracy"] < 0.1
    assert all(isinstance(r["accuracy_drop"], float) for r in data["results"])


def test_score_attention_with_html(reference_checkpoint, tmp_path):
    out = tmp_path / "scores"
    result = ok(probe("score_attention.py", reference_checkpoint, "--n-prompts", 32, "--out", out, "--html"))
    assert "TemplateScores" in result.stdout
    data = json.loads((out / "scores.json").read_text())
    assert {"pairwise", "balance", "pair_mass", "best", "per_head", "mean_row"} <= set(data)
    assert 0.7 < data["pairwise"] <= 1 and data["pair_mass"] > 0.95 and data["best"] == "pairwise"
    assert_png(out / "attention.png")
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "CircuitsVis" in page
    assert "unpkg.com" not in page and 'src="http' not in page  # opens offline


# ------------------------------------------------------------ bad input
@pytest.fixture(scope="module")
def bad_inputs(reference_checkpoint, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("bad")
    (root / "plain.txt").write_text("not a checkpoint")
    (root / "empty").mkdir()
    (root / "nested" / "notes").mkdir(parents=True)
    (root / "broken").mkdir()
    shutil.copy(reference_checkpoint / "model.safetensors", root / "broken")
    (root / "broken" / "config.json").write_text('{"format": "something-else/1"}')
    (root / "full").mkdir()
    (root / "full" / "x").write_text("x")
    return dict(root=root, ckpt=reference_checkpoint)


CASES = {  # name -> (arguments, expected exit code, words in the message)
    "missing path": (lambda d: [d["root"] / "nope"], 2, "checkpoint not found"),
    "a plain file": (lambda d: [d["root"] / "plain.txt"], 2, "is a file"),
    "no checkpoints": (lambda d: [d["root"] / "nested"], 2, "no checkpoints in"),
    "empty directory": (lambda d: [d["root"] / "empty"], 2, "no checkpoints in"),
    "--n-prompts 0": (lambda d: [d["ckpt"], "--n-prompts", "0"], 2, "--n-prompts must be >= 1"),
    "--n-prompts x": (lambda d: [d["ckpt"], "--n-prompts", "x"], 2, "must be an integer"),
    "non-empty --out": (lambda d: [d["ckpt"], "--out", d["root"] / "full"], 2, "pass --force"),
    "--out is the checkpoint": (lambda d: [d["ckpt"], "--out", d["ckpt"], "--force"], 2, "checkpoint directory"),
    "broken checkpoint": (lambda d: [d["root"] / "broken"], 1, "unknown checkpoint format"),
    # issue 8, item 9: seeds are checked to fit in 64 bits (it failed late with "Overflow when unpacking long long")
    "--seed 2**64-1": (lambda d: [d["ckpt"], "--seed", str(2**64 - 1)], 2, "--seed must be <= 9223372036854775807"),
    "--seed -1": (lambda d: [d["ckpt"], "--seed", "-1"], 2, "--seed must be >= 0"),
    # issue 20, item 12: paths the OS refuses end in one line
    "NUL in the checkpoint path": (lambda d: ["a\0b"], 2, "a"),
    "checkpoint name too long": (lambda d: [d["root"] / ("x" * 5000)], 2, "checkpoint"),
    "NUL in --out": (lambda d: [d["ckpt"], "--out", "o\0ut"], 2, "out"),
    "--out name too long": (lambda d: [d["ckpt"], "--out", d["root"] / ("x" * 300)], 2, "out"),
    # issue 8, item 6: an unwritable --out is found before any work
    "--out under a file": (lambda d: [d["ckpt"], "--out", d["root"] / "plain.txt" / "sub"], 2, "is not a directory"),
    "--out read-only": (lambda d: [d["ckpt"], "--out", "/proc/icr-probe-out"], 2, "in /proc"),
}


# The scripts share one code path (_common.run_main / check_common): every case runs in-process on each script
# (no interpreter start-up), and test_bad_input_from_the_command_line checks the real command line.
BAD_INPUT_RUNS = [(case, script) for case in CASES for script in SCRIPTS
                  if CASES[case][1] == 2 or script == "patching.py"]


@pytest.mark.parametrize("case, script", BAD_INPUT_RUNS)
def test_bad_input_is_one_line(bad_inputs, script, case, tmp_path, capsys, monkeypatch):
    make_args, code, words = CASES[case]
    args = make_args(bad_inputs)
    if "--out" not in args:
        args += ["--out", tmp_path / "out"]
    load = []
    monkeypatch.setattr(probing, "probe_prompts", lambda *a, **k: load.append(a))  # no work may start
    returncode, _, stderr = in_process(script, *args, capsys=capsys)
    assert returncode == code, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: ") and words in lines[0], stderr
    assert "Traceback" not in stderr and not (tmp_path / "out").exists() and load == []


@pytest.mark.parametrize("case", ["--seed 2**64-1",  # answered before the heavy imports: fast
                                  # these two import torch and TransformerLens first: tens of seconds when loaded
                                  pytest.param("--out read-only", marks=pytest.mark.slow),
                                  pytest.param("broken checkpoint", marks=pytest.mark.slow)])
def test_bad_input_from_the_command_line(bad_inputs, case, tmp_path):
    make_args, code, words = CASES[case]
    args = make_args(bad_inputs)
    if "--out" not in args:
        args += ["--out", tmp_path / "out"]
    result = probe_cli("patching.py", *args)
    assert result.returncode == code and result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("script, args, words", [
    ("patching.py", ["--method", "attribution"], "applies to one checkpoint"),
    ("patching.py", ["--corruption", "answer"], "invalid choice"),
    ("ablate.py", [], "takes one checkpoint"),
    ("ablate.py", ["--method", "median"], "invalid choice"),
    ("score_attention.py", [], "takes one checkpoint"),
])
def test_incompatible_options(reference_checkpoint, tmp_path, script, args, words):
    """Options that do not fit a directory of checkpoints (or at all): exit 2, one line."""
    series = tmp_path / "run"
    (series / "ckpt-1").mkdir(parents=True)
    shutil.copy(reference_checkpoint / "config.json", series / "ckpt-1")
    result = probe(script, series, *args, "--out", tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and words in result.stderr


def test_default_output_directory_is_new(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "ckpts" / "step-10"
    assert probing.output_dir(None, False, "patching", ckpt) == Path("runs/patching-step-10")
    (tmp_path / "runs" / "patching-step-10").mkdir(parents=True)
    assert probing.output_dir(None, False, "patching", ckpt) == Path("runs/patching-step-10")  # empty: fine
    (tmp_path / "runs" / "patching-step-10" / "patching.json").write_text("{}")
    assert probing.output_dir(None, False, "patching", ckpt) == Path("runs/patching-step-10-2")  # never overwritten
    with pytest.raises(probing.ProbeInputError, match="pass --force"):
        probing.output_dir(Path("runs/patching-step-10"), False, "patching", ckpt)
    assert probing.output_dir(Path("runs/patching-step-10"), True, "patching", ckpt) == Path("runs/patching-step-10")


def test_probe_scripts_are_thin():
    for script in (*SCRIPTS, "_common.py"):
        assert len((REPO / "probes" / script).read_text().splitlines()) < 150, script


def test_checkpoint_discovery_orders_by_step(tmp_path, reference_checkpoint):
    shutil.copytree(reference_checkpoint, tmp_path / "z-final")  # metrics step 200
    for name in ("ckpt-50", "ckpt-7", ".ckpt-9.tmp-1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text('{"format": "icr_interp-checkpoint/1"}')  # step from the name
    (tmp_path / "notes").mkdir()
    (tmp_path / "hf-model").mkdir()  # a foreign folder with a config.json (no format marker) is not a checkpoint
    (tmp_path / "hf-model" / "config.json").write_text("{}")
    entries = probing.find_checkpoints(tmp_path)
    assert [(e.name, e.step) for e in entries] == [("ckpt-7", 7), ("ckpt-50", 50), ("z-final", 200)]
    assert probing.checkpoint_kind(tmp_path) == "series" and probing.checkpoint_kind(tmp_path / "ckpt-7") == "checkpoint"


def test_probe_prompts_use_derived_seeds(reference_checkpoint):
    ck = load_checkpoint(reference_checkpoint)
    batch, corruption_seed = probing.probe_prompts(ck.task, 8, 5)
    assert corruption_seed == derive_seed(5, "corrupt")
    assert batch.tokens.equal(ck.task.sample(8, seed=derive_seed(5, "analysis")).tokens)


def test_permission_denied_is_one_line(reference_checkpoint, tmp_path, capsys, monkeypatch):
    """EACCES from the OS (simulated: the tests run as root, who is never refused) ends in one line, exit 2."""
    def refuse(out, *args):
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(probing, "output_dir", refuse)
    code, out, err = in_process("ablate.py", reference_checkpoint, "--out", tmp_path / "locked", capsys=capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Permission denied" in err


def test_ctrl_c_during_start_up_is_one_line_and_130(tmp_path):
    """SIGINT while the library imports (seconds): one line, exit 130, no traceback."""
    import signal
    import time

    # a real checkpoint, so that the checks pass at once and the run is importing torch when the signal comes
    proc = subprocess.Popen([sys.executable, str(REPO / "probes" / "patching.py"),
                             str(REPO / "tests" / "data" / "legacy_tiny_pair"), "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)  # parsed by now; importing torch and TransformerLens takes seconds
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "patching.py: interrupted\n", (proc.returncode, err)
