"""case_studies/starts.py runs at a tiny size and measures what it says."""

import json

import _scripts


def test_starts_case_study(tmp_path):
    result = _scripts.run_main("case_studies", "starts.py", "--shapes", "32x4x3", "--seeds", "0", "--n-eval", "128",
                               "--out", tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads((tmp_path / "starts.json").read_text())["rows"]
    by_start = {r["start"]: r for r in rows}
    assert set(by_start) == {"answer", "subject", "sink"}
    assert by_start["sink"]["start_accuracy"] < 0.2 < by_start["answer"]["start_accuracy"] < 0.95
    assert all(r["ceiling"] == 1.0 for r in rows)


def test_bad_shape_is_one_line(tmp_path):
    result = _scripts.run_main("case_studies", "starts.py", "--shapes", "64by8", "--out", tmp_path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
