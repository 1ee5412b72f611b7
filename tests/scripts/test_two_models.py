"""case_studies/two_models.py: every registered model's recall against k with its baselines, one row per (model, k)."""

import json

import pytest

from _scripts import run_main


def test_two_models_writes_a_row_per_model_and_k(tiny_smol_llama, monkeypatch, tmp_path):
    import icr_interp as ii
    from icr_interp.model import pretrained_lm as P

    monkeypatch.setattr(ii, "load_pretrained_lm", lambda name, **kw: tiny_smol_llama, raising=False)
    monkeypatch.setattr(ii, "pretrained_lm_names", lambda: ["tiny-a", "tiny-b"], raising=False)
    monkeypatch.setattr(P, "load_pretrained_lm", lambda name, **kw: tiny_smol_llama)
    with pytest.warns(UserWarning):  # the hand-written base has relations without a phrase (said once)
        done = run_main("case_studies", "two_models.py", "--k", "0", "2", "--n-prompts", "8", "--threads", "1",
                        "--out", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((tmp_path / "two_models.json").read_text())
    assert [(r["model"], r["k"]) for r in saved["rows"]] == [("tiny-a", 0), ("tiny-a", 2), ("tiny-b", 0), ("tiny-b", 2)]
    for row in saved["rows"]:
        low, high = row["ci"]
        assert 0.0 <= low <= row["accuracy"] <= high <= 1.0 and row["n_prompts"] == 8
    assert saved["pair_template"] == "{s} -> {a}\n" and "tiny-b k=2" in " ".join(done.stdout.split())
