"""Capacity sweep (icr_interp.experiments.capacity): the search finds a planted threshold; the sweep's output."""

import json
import math

import pytest
import torch

from icr_interp import build_model
from icr_interp.analysis.weights.weight_probes import memory_probe
from icr_interp.experiments.capacity import capacity_sweep, exact_capacity, plot_capacity
from icr_interp.experiments.fits import constant_fit
from icr_interp.experiments.n_star import SearchRule, capacity, search
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask

PLANTED = 37  # the memory below stores at most this many facts


def planted_memory_recall(n_facts: int) -> dict:
    """A constructed memory over ``n_facts`` facts (one relation) whose stage-II neurons beyond the first
    ``PLANTED`` write the wrong answer: recall ``min(1, PLANTED / n)``, so >= 0.99 exactly up to N = 37."""
    task = ICRecallTask(KnowledgeBase.random(n_facts, 1, n_facts, seed=0), n_pairs=2)
    model = build_model(task, memory="pair", memory_impl="dense")
    with torch.no_grad():
        W_out = model.blocks[-1].mlp.W_out
        W_out[PLANTED:] = W_out[0].clone()  # fact 0's answer: another subject's, wrong under a bijection
    return dict(accuracy=memory_probe(model, task)["accuracy"])


@pytest.mark.parametrize("n_min", [3, 64])  # from below, and from a floor that already fails
def test_capacity_search_finds_a_planted_threshold(n_min):
    rule = SearchRule(target=0.99, n_max=256, tolerance=0.0, n_min=n_min, reference_first=False)
    runs = search(planted_memory_recall, "fails", rule)
    state = capacity(runs, rule)
    assert state["capacity"] == PLANTED and state["resolved"] and not state["non_monotone"]
    assert len(runs) <= 12  # doubling then bisection, not a scan


def test_capacity_not_reached_and_floor_failure():
    rule = SearchRule(target=0.99, n_max=40, tolerance=0.0, n_min=5, reference_first=False)
    always = capacity(search(lambda n: dict(accuracy=1.0), "fails", rule), rule)
    assert always["capacity"] == 40 and not always["reached"]
    never = capacity(search(lambda n: dict(accuracy=0.0), "fails", rule), rule)
    assert never["capacity"] == 0 and never["reached"]


def test_constant_fit_recovers_a_known_constant():
    n = [50, 100, 200, 400, 800]
    fit = constant_fit([0.35 * x * math.log(x) for x in n], n, n_boot=200)
    assert fit["constant"] == pytest.approx(0.35) and fit["ci_low"] == pytest.approx(0.35) == fit["ci_high"]
    noisy = constant_fit([2 * x for x in n], n, n_boot=200)
    assert noisy["ci_low"] < noisy["constant"] < noisy["ci_high"]


def test_exact_capacity_matches_the_basis():
    # the smallest width whose exact basis holds S subjects: 6 S + n_ctx + 4 R + 3 directions
    assert exact_capacity(6 * 10 + 6 + 16 + 3, 4, 6) == 40 and exact_capacity(6 * 10 + 6 + 16 + 2, 4, 6) == 36


def test_sweep_writes_rows_and_fit(tmp_path):
    result = capacity_sweep(sizes=((24, 48),), memories=("pretrained",), pretrain_steps=20, tolerance=0.5,
                            n_boot=50, log=lambda line: None).to_dict()
    rows = [r for r in result["rows"] if r["memory"] == "pretrained"]
    assert rows and all({"params", "n_star"} <= set(r) for r in result["rows"])
    assert rows[0]["params"] == 24 * 48 and rows[0]["n_star"] % 4 == 0
    assert {"constant", "ci_low", "ci_high"} <= set(result["fit"])
    constructed = [r for r in result["rows"] if r["memory"] == "constructed"]
    assert constructed[0]["recall_at_n_star"] == 1.0 and constructed[0]["n_star"] == 48
    json.dumps(result)
    plot_capacity(result)


def test_sweep_refuses_bad_configs():
    with pytest.raises(ValueError, match="memories"):
        capacity_sweep(memories=("nope",))
    with pytest.raises(ValueError, match="size"):
        capacity_sweep(sizes=((4, 8),))


def test_ic_model_rows_count_attention_and_both_stages():
    result = capacity_sweep(sizes=((24, 48),), memories=("ic_model",), pretrain_steps=10, finetune_steps=2,
                            n_samples=32, eval_prompts=32, max_subjects=6, n_boot=20, log=lambda line: None)
    row = next(r for r in result.rows if r["memory"] == "ic_model")
    assert row["params"] == 4 * 24 * 24 + 4 * 48 * 24
    assert all("ceiling" in run or run.get("skipped") for run in row["runs"].values())


def test_case_study_writes_the_pinned_json(tmp_path):
    script = _script()
    assert script.main(["--sizes", "24:48", "--pretrain-steps", "10", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "capacity.json").read_text())
    assert all({"params", "n_star"} <= set(row) for row in data["rows"])
    assert {"constant", "ci_low", "ci_high"} <= set(data["fit"]) and (tmp_path / "capacity.png").exists()
    with pytest.raises(SystemExit):
        script.main(["--sizes", "24x48", "--out", str(tmp_path)])


def _script():
    from _scripts import load  # restores whichever _common (probes' or case studies') was imported before

    return load("case_studies", "capacity.py")


def test_size_argument_parses_d_colon_m_and_nothing_else():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    size = _script().size

    @settings(max_examples=60, deadline=None)
    @given(st.integers(0, 10**6), st.integers(0, 10**6))
    def roundtrip(d, m):
        assert size(f"{d}:{m}") == (d, m)

    @settings(max_examples=60, deadline=None)
    @given(st.text(max_size=12))
    def junk(text):
        parts = text.split(":")
        try:
            if len(parts) == 2 and [int(p) for p in parts]:
                return  # a D:M int() reads (signs, spaces, "1_0"): the sweep's config refuses bad values
        except ValueError:
            pass
        with pytest.raises(ValueError, match="D:M"):
            size(text)

    roundtrip()
    junk()
