"""case_studies/positional_recipe.py runs at a tiny size, records the recipe it used, and refuses bad shapes."""

import json

import _scripts


def test_positional_recipe_case_study(tmp_path):
    done = _scripts.run_main("case_studies", "positional_recipe.py", "--shapes", "16x4x2x0", "--lrs", "0.03", "auto",
                             "--steps", "5", "--n-samples", "32", "--n-eval", "64", "--n-template", "32",
                             "--out", tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "positional_recipe.json").read_text())["rows"]
    assert [(r["lr"], r["schedule"]) for r in rows] == [(0.03, "constant"), (0.1, "cosine")]
    for r in rows:
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["pairwise"] <= 1 and 0 <= r["pairwise_null"] <= 1
        assert r["start_accuracy"] == rows[0]["start_accuracy"]  # the same start for every recipe


def test_bad_shape_is_one_line_and_exit_2(tmp_path):
    done = _scripts.run_main("case_studies", "positional_recipe.py", "--shapes", "16x4x2", "--out", tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "SxRxKxSEED" in done.stderr
    assert not any(tmp_path.iterdir())  # nothing written
