"""The real-fact case study runs end to end at a tiny size; its numbers are in range and its groups add up."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run(script: str, *args) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, str(REPO / "case_studies" / script), *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


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
    assert 0 <= patch["relation_swap_same_target"] <= patch["relation_swap_same_prompt"] <= patch["relation_n_prompts"]
    assert isinstance(patch["verdict"], str) and patch["verdict"]
    assert (tmp_path / "real_facts.png").read_bytes()[:8] == PNG_MAGIC
