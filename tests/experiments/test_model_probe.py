"""Long real-model runs a person can watch (issue 24 item 4) and read (issue 28 items 13-15, 20).

* the probe prints an estimate calibrated on one forward before the heavy work, a line per phase, and saves
  each phase as it ends: a run interrupted in its second phase keeps the first in patching.json;
* the estimate's floor (token-blocks) counts what a patch really changes;
* a grid part patched in chunks, and chosen cells prompt by prompt, equal role patching;
* attention.png stays bounded in pixels whatever the model's depth; MemoryError is one line;
* the score table of a deep model is a dozen lines that say why a head is starred; the report's layers say
  when no head beats its null; an evaluation prints accuracy with its interval and explains its ceiling.
"""

import base64
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _scripts import run_main

DATA = Path(__file__).resolve().parents[1] / "data"


# ------------------------------------------------------------------ phases, estimate, interrupt
def test_phases_announce_an_estimate_and_save_each_phase_before_an_interrupt():
    from icr_interp.experiments.progress import Phases

    lines, saved = [], {}
    phases = Phases({"a": 2.0, "b": 90.0}, save=saved.__setitem__, log=lines.append)
    phases.announce()
    assert lines[0].startswith("[estimate] about 1 min 32 s in 2 phases") and "a ~2 s" in lines[0]
    assert phases.run("a", lambda: 41) == 41 and saved == {"a": 41}
    with pytest.raises(KeyboardInterrupt):
        phases.run("b", lambda: (_ for _ in ()).throw(KeyboardInterrupt))
    assert saved == {"a": 41} and any(line.startswith("[1/2] a done in") for line in lines)


def test_calibration_times_one_forward(tiny_smol_llama):
    from icr_interp.experiments.progress import calibrate

    tokens = torch.randint(0, 1000, (4, 12))
    cal = calibrate(tiny_smol_llama, tokens)
    assert cal.n_tokens == 48 and cal.n_layers == 2 and cal.forward_s > 0
    assert math.isclose(cal.seconds(96), cal.forward_s, rel_tol=1e-9)  # 48 tokens x 2 blocks = one forward


@pytest.fixture
def tiny_smollm(monkeypatch, tiny_smol_llama):
    from icr_interp.model import pretrained_lm as P

    monkeypatch.setattr(P, "load_pretrained_lm", lambda name, device="cpu", **kw: tiny_smol_llama)
    return tiny_smol_llama


def test_the_probe_prints_its_estimate_and_keeps_finished_phases_when_interrupted(tiny_smollm, tmp_path, monkeypatch):
    from icr_interp.experiments import probe_grid

    real, calls = probe_grid.run_part, []

    def second_is_interrupted(*args, **kwargs):
        calls.append(args[-1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(probe_grid, "run_part", second_is_interrupted)
    out = tmp_path / "run"
    done = run_main("probes", "patching.py", "--model", "smollm2-135m", "--csv", DATA / "elements.csv", "--k", "2",
                    "--n-prompts", "6", "--eval-prompts", "6", "--corruption", "query", "--out", out)
    assert done.returncode == 130 and "interrupted" in done.stderr
    assert "[estimate] about" in done.stdout and "[calibrate] one forward of" in done.stdout
    assert "[1/5] query: resid done in" in done.stdout and "[2/5] query: prediction ..." in done.stdout
    assert re.search(r"   resid: (\d+) of \1 cells patched", done.stdout)  # progress inside a phase
    saved = json.loads((out / "patching.json").read_text())
    assert saved["complete"] is False and list(saved["results"]["query"]) == [
        "n_prompts", "n_requested", "n_dropped", "resid"]
    resid = saved["results"]["query"]["resid"]
    assert len(resid["components"]) == 2 and len(resid["values"][0]) == len(resid["roles"])


def test_the_full_probe_writes_every_phase(tiny_smollm, tmp_path):
    out = tmp_path / "full"
    done = run_main("probes", "patching.py", "--model", "smollm2-135m", "--csv", DATA / "elements.csv", "--k", "2",
                    "--n-prompts", "6", "--eval-prompts", "6", "--corruption", "query", "--grid", "full", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "patching.json").read_text())
    query = saved["results"]["query"]
    assert saved["complete"] is True and {"resid", "prediction", "heads", "screen"} <= set(query)
    assert len(query["heads"]["components"]) == 2 * 4 and query["prediction"]["roles"] == ["prediction"]
    screen = query["screen"]
    assert len(screen["estimate"]["components"]) == 2 * 2 * 4 and screen["n_exact"] == 30 and screen["k"] == 10
    assert 0.0 <= screen["recall"] <= 1.0 and -1.0 <= screen["rank_correlation"] <= 1.0
    assert (out / "circuit.json").is_file() and (out / "report.html").is_file()
    assert "largest edge" in done.stdout and "[done]" in done.stdout


# ------------------------------------------------------------------ the grid's floor and its screen
def test_grid_blocks_count_only_what_a_patch_changes(tiny_smol_llama):
    from icr_interp.experiments import probe_grid as G
    from icr_interp.task.knowledge import KnowledgeBase
    from icr_interp.task.text import TextICRecallTask

    task = TextICRecallTask(KnowledgeBase.builtin("countries"), tiny_smol_llama.tokenizer, n_pairs=2)
    batch = task.sample(4, seed=0)
    n, n_pos = batch.tokens.shape
    base = 2 * n * n_pos * 2
    hooks, roles = G.part_grid(tiny_smol_llama, "heads")
    assert G.grid_blocks(tiny_smol_llama, batch, batch, hooks, roles) == base  # nothing differs: base runs only
    clean, corrupted, _ = task.corrupt_pairs(batch, "query", seed=0)
    # a query swap changes the query; every head's z at the prediction reruns (2 - L) blocks, one row each
    assert G.grid_blocks(tiny_smol_llama, clean, corrupted, hooks, roles) == 2 * len(clean) * n_pos * 2 + \
        len(clean) * 4 * (2 + 1)


def test_chunked_parts_and_per_prompt_cells_equal_role_patching(tiny_smol_llama):
    from icr_interp.analysis.causal.patching import patch_by_role
    from icr_interp.experiments import probe_grid as G
    from icr_interp.model import hooks as H
    from icr_interp.task.knowledge import KnowledgeBase
    from icr_interp.task.text import TextICRecallTask

    task = TextICRecallTask(KnowledgeBase.builtin("countries"), tiny_smol_llama.tokenizer, n_pairs=2)
    clean, corrupted, _ = task.corrupt_pairs(task.sample(6, seed=1), "relation", seed=0)
    lines = []
    part = G.run_part(tiny_smol_llama, clean, corrupted, "resid", log=lines.append, n_chunks=2)
    ref = patch_by_role(tiny_smol_llama, clean, corrupted, hooks=G.part_grid(tiny_smol_llama, "resid")[0])
    assert len(lines) == 2 and part.components == ref.components and part.roles == ref.roles
    assert torch.allclose(part.values, ref.values, atol=1e-5, equal_nan=True)
    cells = [(H.hook(1, "z"), 2, "answers"), (H.hook(0, "pattern"), 1, "subjects"), (H.hook(0, "z"), 0, "query")]
    runs = G.per_prompt_cells(tiny_smol_llama, clean, corrupted, cells)
    assert runs["patched"].shape == (3, len(clean)) and runs["clean"].shape == (len(clean),)
    ci = G.restored_interval(runs["patched"], runs["clean"], runs["corrupted"], n_boot=200)
    for (hook, head, role), value, lo, hi in zip(cells, ci["value"], ci["lo"], ci["hi"]):
        ref = patch_by_role(tiny_smol_llama, clean, corrupted, hooks=[hook], roles=[role])
        assert value == pytest.approx(ref[f"{hook}:h{head}", role], abs=1e-4) and lo <= hi


# ------------------------------------------------------------------ readable output
def test_attention_png_is_bounded_for_a_deep_model():
    from icr_interp import ICRecallTask, KnowledgeBase
    from icr_interp.experiments.checkpoint_analysis import attention_png
    from icr_interp.viz import grids
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    task = ICRecallTask(KnowledgeBase.random(16, 4, 16, 1.0, seed=0), n_pairs=2)
    cfg = HookedTransformerConfig(n_layers=6, d_model=8, n_heads=2, d_head=4, n_ctx=task.n_ctx,
                                  d_vocab=task.vocab.size, attn_only=True, seed=0)
    png = attention_png(HookedTransformer(cfg), task.sample(8, seed=0))
    width, height = Image.open(io.BytesIO(png)).size
    assert max(width, height) <= grids.MAX_PIXELS and width * height <= grids.MAX_PIXELS ** 2
    rows = {layer: np.random.rand(4, 16, 7) for layer in range(30)}
    fig = grids.plot_head_grid(rows, [f"s{i}" for i in range(7)], 4)
    assert max(fig.get_size_inches() * grids.DPI) <= grids.MAX_PIXELS + 1
    assert "26 more layers not drawn" in fig._suptitle.get_text()


def test_memory_error_is_one_line(capsys):
    from icr_interp.plumbing import run_main as plumbing_main

    code = plumbing_main("prog", lambda: np.empty((2**50,), dtype=np.float64).sum(), failures=(ValueError,))
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("prog: error: out of memory:") and len(err.strip().splitlines()) == 1


class _Scores:
    """Just enough of TemplateScores for the summaries: ``to_dict()`` with per-head rows."""

    def __init__(self, edges: dict, star=(2, 0), n_layers: int = 5, n_heads: int = 3):
        self.rows = [dict(layer=l, head=h, pairwise=0.5 + edges.get((l, h), (0.0, ""))[0], pairwise_null=0.5,
                          p_value=0.001 if (l, h) in edges else 0.6, pair_mass=0.3,
                          best=edges.get((l, h), (0.0, "uniform"))[1] or "uniform")
                     for l in range(n_layers) for h in range(n_heads)]
        self.star = star

    def to_dict(self):
        return dict(layer=self.star[0], head=self.star[1], n_examples=16, per_head=self.rows)


def test_report_layers_say_when_no_head_beats_its_null():
    from icr_interp.experiments.text_probe import report_layers

    layers, note = report_layers(_Scores({(4, 1): (0.2, "pairwise"), (1, 2): (0.1, "pairwise")}))
    assert layers == [1, 4] and "beats its pairing null (2 heads" in note
    layers, note = report_layers(_Scores({(3, 0): (0.001, "uniform")}))
    assert len(layers) == 3 and 3 in layers and note.startswith("no head's prediction row beats its pairing null")


def test_scores_summary_counts_pairwise_heads_and_explains_the_star():
    from icr_interp.experiments.text_probe import scores_summary

    text = scores_summary(_Scores({(4, 1): (0.2, "pairwise"), (1, 2): (0.1, "pairwise")}, star=(4, 0)), top=3)
    lines = text.splitlines()
    assert "15 heads' prediction rows on 16 prompts: 2 pairwise by the null rule" in lines[0]
    assert "largest edge +0.200 at L4H1" in lines[0] and lines[-2].startswith("edge = pairwise - re-paired null")
    assert len(lines) == 3 + 3 + 1 + 2  # header, top 3, the starred head below them, what edge is, why the star
    assert lines[-3].lstrip().startswith("*L4H0") and "most attention on the context pairs" in lines[-1]


def test_evaluation_summary_is_readable():
    from icr_interp.experiments.text_probe import EvaluationSummary, wilson

    low, high = wilson(52, 64)
    assert 0.700 < low < 0.701 and 0.889 < high < 0.890 and wilson(0, 10)[0] == pytest.approx(0.0, abs=1e-12)
    text = str(EvaluationSummary(52 / 64, 52, 64, low, high, 1 / 197, 197, 0.993, 0.83))
    assert "0.812 (52 of 64 prompts; 95% CI 0.700-0.889)" in text and "chance 0.0051 (1 of 197 answers)" in text
    assert "ceiling 0.993: the best accuracy any model could reach" in text and "[" not in text


def test_query_rows_of_many_heads_are_one_bounded_figure():
    from icr_interp.viz import grids, report

    rows = torch.rand(6, 9, 5)
    page = report.query_rows_section(rows, ["s1", "a1", "s2", "a2", "query"], 20)
    assert page.count("<img") == 1 and "L20H8" in page  # the table names every head; one grid draws them
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    assert max(Image.open(io.BytesIO(png)).size) <= grids.MAX_PIXELS
    assert report.query_rows_section(rows[:, :2], ["s1", "a1", "s2", "a2", "query"], 0).count("<img") == 4
