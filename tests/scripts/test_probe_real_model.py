"""probes/patching.py on a real language model (--model NAME --csv FILE --k K, templates): issue 19 item 5.

The argument checks run before any heavy import. The end-to-end run uses a random 2-layer Llama with
SmolLM2's tokenizer in place of the 30-layer model (the same code path: a TransformerLens model with a
tokenizer, text prompts with token spans), on a knowledge base written by hand (tests/data/elements.csv:
chemical elements, three relations, shared answers, gaps) and a template the toolkit was not tuned for.
"""

import json
from pathlib import Path

import pytest

from _scripts import run_main

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("args,message", [
    (["--model", "smollm2-135m"], "exactly one knowledge base"),
    (["--csv", str(DATA / "elements.csv")], "needs --model"),
    (["--model", "smollm2-135m", "--csv", "nope.csv"], "is not a file"),
    (["--model", "smollm2-135m", "--builtin", "countries", "--csv", str(DATA / "elements.csv")],
     "exactly one knowledge base"),
    (["--model", "smollm2-135m", "--builtin", "countries", "--pair-template", "{s} is {x}"], "must name"),
    (["--model", "smollm2-135m", "--builtin", "countries", "--k", "0"], "--k must be >= 1"),
    ([], "give a CHECKPOINT directory, or --model"),
])
def test_bad_model_arguments_are_one_line(args, message):
    done = run_main("probes", "patching.py", *args)
    assert done.returncode == 2 and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.fixture
def tiny_smollm(monkeypatch, tiny_smol_llama):
    """load_pretrained_lm returns the tiny Llama with SmolLM2's tokenizer (tests/conftest.py)."""
    from icr_interp.model import pretrained_lm as P

    monkeypatch.setattr(P, "load_pretrained_lm", lambda name, device="cpu", **kw: tiny_smol_llama)
    return tiny_smol_llama


def test_the_probe_writes_its_report_for_a_real_model(tiny_smollm, tmp_path):
    out = tmp_path / "report"
    done = run_main("probes", "patching.py", "--model", "smollm2-135m", "--csv", DATA / "elements.csv",
                    "--k", "2", "--pair-template", "Q: {s}\\nA: {a}\\n", "--query-template", "Q: {s}\\nA:",
                    "--n-prompts", "6", "--eval-prompts", "6", "--corruption", "query", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "patching.json").read_text())
    assert saved["model"] == "smollm2-135m" and saved["pair_template"] == "Q: {s}\nA: {a}\n"
    assert saved["corruptions"] == ["query"] and saved["results"]["query"]["n_prompts"] >= 1
    page = (out / "report.html").read_text()
    assert "hidden relation" in page and ">nan<" not in page.lower()
    assert not (out / "circuit.json").exists()  # the circuit summary is part of --grid full on a real model
    from icr_interp.experiments.probe_grid import DEFAULT_PARTS

    assert set(DEFAULT_PARTS) <= set(saved["results"]["query"])  # the default grid's parts, each saved


def test_score_attention_on_a_real_model(tiny_smollm, tmp_path):
    out = tmp_path / "scores"
    done = run_main("probes", "score_attention.py", "--model", "smollm2-135m", "--builtin", "countries", "--k", "2",
                    "--n-prompts", "6", "--html", "--out", out)
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads((out / "scores.json").read_text())
    assert saved["model"] == "smollm2-135m" and saved["n_examples"] == 6 and len(saved["per_head"]) == 2 * 4
    assert all(0.0 <= h["pairwise"] <= 1.0 and 0.0 <= h["p_value"] <= 1.0 for h in saved["per_head"])
    assert "hidden relation" in (out / "report.html").read_text()
