"""Every case study runs end to end at a tiny size and writes what docs/results.md says it writes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import _scripts

REPO = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(script: str, *args) -> subprocess.CompletedProcess:
    """The case study's ``main`` in this process (tests/_scripts.py): exit 0, its output captured."""
    result = _scripts.run_main("case_studies", script, *args)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


def test_emergence(tmp_path):
    run("emergence.py", "--preset", "tiny", "--steps", "10", "--every", "5", "--n-prompts", "32", "--out", tmp_path)
    data = json.loads((tmp_path / "emergence.json").read_text())
    s = data["series"]
    assert s["step"] == [0, 5, 10]
    assert all(0.0 <= v <= 1.0 for key in ("pairwise", "balance", "accuracy") for v in s[key])
    assert s["best"][0] == "answers"  # the answer-tilted start
    assert all(png(tmp_path / f) for f in ("emergence.png", "emergence_rows_start.png", "emergence_rows_end.png"))


def test_sample_complexity_resumes(tmp_path):
    args = ("--sizes", 64, 128, "--n-relations", 4, "--seeds", 0, 1, "--steps", 5, "--n-eval", 32, "--n-max", 8,
            "--workers", 0, "--out", tmp_path)
    run("sample_complexity.py", *args)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    summary = json.loads((tmp_path / "summary.json").read_text())
    runs = summary["runs"]
    assert len(runs) == 2 * 2 * 2  # sizes x seeds x attentions
    assert {(r["n_triplets"], r["attention"]) for r in runs} == {(n, a) for n in (64, 128) for a in ("full", "positional")}
    for r in runs:
        assert {"n_triplets", "seed", "attention", "start_accuracy", "n_star"} <= set(r)
        assert r["n_star"] is None or 1 <= r["n_star"] <= 8
    assert sum(r["n_runs"] for r in runs) == len(lines)  # every run belongs to one chain, none twice
    for attention in ("full", "positional"):
        fits = summary["fits"][attention]
        assert set(fits) >= {"power", "polylog", "better"}
        if fits["power"]:
            assert {"gamma", "gamma_ci90"} <= set(fits["power"]) and {"c", "c_ci90"} <= set(fits["polylog"])
    assert png(tmp_path / "sample_complexity.png")
    again = run("sample_complexity.py", *args)  # resume: nothing to redo
    assert (tmp_path / "results.jsonl").read_text().splitlines() == lines
    assert "attention full" in again.stdout


def test_context_pairs(tmp_path):
    run("context_pairs.py", "--ks", 1, 2, "--grid", 8, 16, "--steps", 5, "--kb", 16, 4, 16, "--workers", 0,
        "--out", tmp_path)
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [r["k"] for r in rows] == [1, 2] and all(0 <= r["accuracy"] <= 1 for r in rows)
    assert png(tmp_path / "context_pairs.png")


def test_answer_overlap_picks_the_construction(tmp_path):
    run("answer_overlap.py", "--overlaps", 0, 1, "--seeds", 0, "--kb", 16, 4, 16, "--n-samples", 32, "--steps", 5,
        "--workers", 0, "--out", tmp_path)
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert [(r["answer_overlap"], r["construction"]) for r in rows] == [(0.0, "answer"), (1.0, "pair")]
    assert png(tmp_path / "answer_overlap.png")


def test_pretrained_memory(tmp_path):
    run("pretrained_memory.py", "--kb", 16, 4, 16, "--k", 2, "--steps", 10, "--n-samples", 32, "--pretrain-steps", 20,
        "--every", 5, "--out", tmp_path)
    runs = json.loads((tmp_path / "pretrained_memory.json").read_text())["runs"]
    assert [r["memory"] for r in runs] == ["constructed", "pretrained"]
    assert all(len(r["series"]["step"]) == 3 for r in runs)
    assert png(tmp_path / "pretrained_memory.png")


def test_defaults_check_one_case(tmp_path):
    result = run("defaults_check.py", "--max-cases", 1, "--out", tmp_path)
    rows = json.loads((tmp_path / "defaults_check.json").read_text())
    assert len(rows) == 1 and rows[0]["end"] >= 0.95
    assert "accuracy" in result.stdout


@pytest.mark.parametrize("script,args", [("emergence.py", ["--steps", "0"]), ("answer_overlap.py", ["--overlaps", "2"])])
def test_bad_arguments_are_one_line(script, args):
    result = _scripts.run_main("case_studies", script, *args)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and result.stderr.startswith(f"{script}: error: ")


@pytest.mark.slow  # a case study imports torch and TransformerLens before it parses: tens of seconds when loaded
def test_bad_arguments_from_the_command_line():
    """One real command line: the script's own interpreter, exit code and stderr."""
    result = subprocess.run([sys.executable, str(REPO / "case_studies" / "emergence.py"), "--steps", "0"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_real_facts(tmp_path):
    run("real_facts.py", "--seeds", 0, "--starts", "answer", "--steps", 3, "--n-samples", 32, "--n-eval", 32,
        "--n-template", 24, "--n-patch", 16, "--threads", 1, "--out", tmp_path)
    data = json.loads((tmp_path / "summary.json").read_text())
    assert data["groups"] == {"shared": ["capital", "largest_city"],
                              "private": ["continent", "currency", "official_language", "calling_code"]}
    (r,) = data["runs"]
    assert (r["k"], r["seed"], r["start"], r["construction"], r["n_eval"]) == (3, 0, "answer", "mixed", 32)
    assert all(0.0 <= r["accuracy"][key] <= 1.0 for key in ("start", "end", "ceiling"))
    for when in ("start", "end"):
        assert 0.0 <= r["templates"][when]["pairwise_null"] <= r["templates"][when]["pairwise"] + 1e-6 <= 1.0 + 1e-6
        groups = r["groups"][when]
        assert groups["all"]["n_prompts"] == groups["shared"]["n_prompts"] + groups["private"]["n_prompts"] == 24
        # the "all" group is the batch run() scored: its per-example scores are the headline's
        assert abs(groups["all"]["pairwise"] - r["templates"][when]["pairwise"]) < 1e-5
        for g in groups.values():
            if g["n_prompts"]:
                assert all(0.0 <= g[key] <= 1.0 for key in ("accuracy", "ceiling", "pairwise", "pairwise_null",
                                                            "balance", "pair_mass"))
                assert abs(sum(g[role] for role in ("subjects", "answers", "bos", "query")) - 1.0) < 1e-4
    patch = r["patching"]
    assert patch["relation_n_prompts"] + patch["relation_n_dropped"] == 16
    assert patch["query_n_prompts"] + patch["query_n_dropped"] == 16
    assert patch["relation_swap_same_target"] == patch["relation_swap_same_prompt"] == 0  # no-op swaps are excluded
    assert isinstance(patch["verdict"], str) and patch["verdict"]
    assert (tmp_path / "real_facts.png").read_bytes()[:8] == PNG_MAGIC
