"""The n* search (doubling grid + bisection) and the bootstrap scaling fits, on simulated chains."""

import math

import numpy as np
import pytest

from icr_interp.experiments.n_star import SearchRule, chain_summary, meets, n_star, next_sizes, summarize
from icr_interp.experiments.fits import bootstrap_fits


def simulate(record, rule=SearchRule(), criteria=("accuracy", "loss")):
    """Run the search to the end against ``record(n)``; return the runs it asked for."""
    runs = {}
    for _ in range(100):
        todo = next_sizes(runs, rule, criteria)
        if not todo:
            return runs
        runs.update({n: record(n) for n in todo})
    raise AssertionError("the search did not terminate")


def step(acc_from, loss_from, start_loss=3.0):
    return lambda n: dict(accuracy=0.99 if n >= acc_from else 0.4, loss=0.1 if n >= loss_from else 2.5,
                          start_loss=start_loss, start_accuracy=0.4, seconds=1.0)


@pytest.mark.parametrize("true", [1, 2, 3, 5, 11, 40, 100, 700])
def test_bisection_brackets_the_threshold(true):
    rule = SearchRule(tolerance=0.0)
    runs = simulate(step(true, 1), rule)
    s = n_star(runs, "accuracy", rule)
    assert s["resolved"] and s["n_star"] == true and s["at_floor"] == (true == 1)
    assert len(runs) <= 2 * math.ceil(math.log2(true + 1)) + 2  # grid + bisection + reference, not a scan


def test_tolerance_bounds_the_bracket():
    rule = SearchRule(tolerance=0.2)
    runs = simulate(step(700, 1), rule)
    s = n_star(runs, "accuracy", rule)
    assert s["lo"] < 700 <= s["hi"] and s["hi"] - s["lo"] <= max(1, int(0.2 * s["hi"]))


def test_loss_criterion_reaches_the_reference_gap():
    rule = SearchRule(tolerance=0.0)
    runs = simulate(step(4, 37), rule)
    assert n_star(runs, "loss", rule)["n_star"] == 37 and n_star(runs, "accuracy", rule)["n_star"] == 4
    assert rule.n_max in runs


def test_loss_without_improvement_has_no_n_star_and_costs_no_scan():
    rule = SearchRule()
    runs = simulate(step(2, 1, start_loss=0.05), rule)  # every run's loss is above the start's
    s = n_star(runs, "loss", rule)
    assert s["resolved"] and s["n_star"] is None and not s["reached"]
    assert sorted(runs) == [1, 2, rule.n_max]


def test_unreached_target_costs_the_reference_and_the_floor():
    rule = SearchRule(n_max=64)
    runs = simulate(step(10**6, 1), rule, criteria=("accuracy",))
    s = n_star(runs, "accuracy", rule)
    assert sorted(runs) == [1, 64] and s["resolved"] and not s["reached"] and s["n_star"] is None


def test_a_floor_hit_under_a_missing_reference_is_non_monotone():
    rule = SearchRule(n_max=64)
    runs = simulate(lambda n: dict(accuracy=0.99 if n == 1 else 0.5, loss=1, start_loss=2), rule, ("accuracy",))
    s = n_star(runs, "accuracy", rule)
    assert s["n_star"] == 1 and s["at_floor"] and s["non_monotone"] and sorted(runs) == [1, 64]


def test_grid_ends_at_n_max():
    assert SearchRule(n_max=100).grid == [1, 2, 4, 8, 16, 32, 64, 100]


def test_a_miss_above_n_star_is_flagged():
    rule = SearchRule()
    runs = {n: dict(accuracy=acc, loss=1, start_loss=2) for n, acc in ((1, 0.99), (2, 0.5), (rule.n_max, 0.99))}
    assert n_star(runs, "accuracy", rule)["non_monotone"]


def test_rule_refuses_bad_values():
    for bad in (dict(target=0), dict(target=1.5), dict(loss_fraction=0), dict(n_max=0), dict(tolerance=1)):
        with pytest.raises(ValueError):
            SearchRule(**bad)


def test_bootstrap_recovers_known_exponents():
    rng = np.random.default_rng(0)
    sizes = [10**2, 10**3, 10**4, 10**5]
    poly = [(n, 2.0 * math.log(n) ** 2 * math.exp(rng.normal(0, 0.1))) for n in sizes for _ in range(5)]
    f = bootstrap_fits(poly, n_boot=300)
    assert f["polylog"]["c_ci90"][0] < 2.0 < f["polylog"]["c_ci90"][1] and abs(f["polylog"]["c"] - 2) < 0.2
    power = [(n, 0.5 * n**0.5 * math.exp(rng.normal(0, 0.1))) for n in sizes for _ in range(5)]
    f = bootstrap_fits(power, n_boot=300)
    assert f["power"]["gamma_ci90"][0] < 0.5 < f["power"]["gamma_ci90"][1] and f["better"] == "power"


def test_constant_n_star_is_a_tie_with_zero_exponents():
    f = bootstrap_fits([(n, 1) for n in (100, 1000) for _ in range(3)], n_boot=50)
    assert f["better"] == "tie" and f["power"]["gamma"] == 0 and f["power"]["gamma_ci90"] == [0.0, 0.0]
    assert bootstrap_fits([(100, 3)])["power"] is None


def test_summary_lines_and_per_n():
    from icr_interp.pipeline.config import RunConfig

    rule = SearchRule(tolerance=0.0)
    lines = []
    for n_subjects, true in ((16, 3), (160, 9)):
        config = RunConfig.from_preset("tiny", seed=1, **{"knowledge.n_subjects": n_subjects})
        lines.append(chain_summary(config, simulate(step(true, 1), rule), rule))
    assert [(line["n_triplets"], line["n_star"]) for line in lines] == [(64, 3), (640, 9)]
    s = summarize(lines, n_boot=20)
    assert [row["n_star_median"] for row in s["per_n"]["full"]] == [3.0, 9.0]
    assert s["fits"]["full"]["power"]["gamma"] == pytest.approx(math.log(3) / math.log(10))


def fake_run(config) -> dict:
    """A stand-in for a fine-tuning run: accuracy reaches the target from 6 prompts on (top level: picklable)."""
    n = config.train.n_samples
    return dict(accuracy=0.99 if n >= 6 else 0.5, loss=0.1 if n >= 6 else 2.0, start_loss=3.0, start_accuracy=0.4,
                seconds=0.0)


def test_run_search_through_the_sweep_resumes_and_summarises_partial_results(tmp_path):
    from icr_interp.pipeline.config import RunConfig
    from icr_interp.experiments.n_star import run_search

    rule = SearchRule(n_max=64, tolerance=0.0)
    chains = {f"seed {s}": RunConfig.from_preset("tiny", seed=s) for s in (0, 1)}
    out = tmp_path / "results.jsonl"
    opts = dict(workers=0, progress=False, run_fn=fake_run, log=lambda line: None)
    runs = run_search(chains, out, rule, **opts)
    assert all(n_star(r, "accuracy", rule)["n_star"] == 6 for r in runs.values())
    lines = out.read_text().splitlines()
    assert len(lines) == sum(len(r) for r in runs.values())  # one record per run, none twice
    assert run_search(chains, out, rule, cached_only=True, **opts) == runs  # the replay runs nothing
    out.write_text("\n".join(lines[: len(lines) // 2]) + "\n")  # a sweep stopped half-way
    partial = run_search(chains, out, rule, cached_only=True, **opts)
    assert 0 < sum(len(r) for r in partial.values()) < len(lines)
    assert out.read_text().splitlines() == lines[: len(lines) // 2]  # cached_only writes nothing


def test_cached_only_replays_each_chain_as_far_as_its_own_runs_go(tmp_path):
    """A chain with no runs (e.g. seeds not started yet) does not stop the replay of the finished ones."""
    from icr_interp.pipeline.config import RunConfig
    from icr_interp.experiments.n_star import run_search

    rule = SearchRule(n_max=64, tolerance=0.0)
    out = tmp_path / "results.jsonl"
    opts = dict(workers=0, progress=False, run_fn=fake_run, log=lambda line: None)
    done = run_search({"seed 0": RunConfig.from_preset("tiny", seed=0)}, out, rule, **opts)
    chains = {f"seed {s}": RunConfig.from_preset("tiny", seed=s) for s in (0, 1)}
    replay = run_search(chains, out, rule, cached_only=True, **opts)
    assert replay["seed 0"] == done["seed 0"] and n_star(replay["seed 0"], "accuracy", rule)["n_star"] == 6
    assert replay["seed 1"] == {}  # nothing of it was run


def test_grid_from_n_min_and_the_walk_up_needs_no_reference():
    rule = SearchRule(n_max=100, n_min=3, reference_first=False, tolerance=0.0)
    assert rule.grid == [3, 6, 12, 24, 48, 96, 100]
    runs = {}
    while (todo := next_sizes(runs, rule, ("accuracy",))):
        assert 100 not in todo or len(runs) == 6  # the reference is never run first
        runs.update({n: dict(accuracy=float(n >= 20)) for n in todo})
    assert n_star(runs, "accuracy", rule)["n_star"] == 20


def test_fails_criterion_and_bad_n_min():
    assert meets("fails", dict(accuracy=0.5), {}, SearchRule(target=0.9))
    with pytest.raises(ValueError, match="criterion"):
        meets("nope", dict(accuracy=0.5), {}, SearchRule())
    with pytest.raises(ValueError, match="n_min"):
        SearchRule(n_min=10, n_max=5)
