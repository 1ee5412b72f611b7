"""The text-path analyses on TransformerLens 4.x's ``TransformerBridge`` give 3.x's numbers (issue 26, item 3).

One tiny random Llama with SmolLM2's tokenizer (seeded, so both lines build the same weights) is registered
and loaded through ``load_pretrained_lm``: a ``HookedTransformer`` on 3.x, a ``TransformerBridge`` in
compatibility mode on 4.x.  :func:`analyses` runs each text-path analysis on it and returns its numbers, or the
one-line error it raised.  On 4.x the test runs it here and in ``.venv``'s interpreter (3.x) and compares:
numbers within 1e-4, and the analyses that do not run on the bridge named with their error (the report in
/work/brief/out/gemma.md lists them).  ``python tests/model/lm/test_bridge_parity.py OUT.json`` writes one line's numbers.
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
TOL = 1e-4


def _flat(value, prefix="") -> dict:
    """Every number in a nested result, by its path (lists and dicts)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}.{key}").items()}
    if isinstance(value, (list, tuple)):
        return {k: v for i, item in enumerate(value) for k, v in _flat(item, f"{prefix}[{i}]").items()}
    if isinstance(value, torch.Tensor):
        return _flat(value.tolist(), prefix)
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return {prefix: float(value)}
    return {}


def analyses(cache_dir: str) -> dict:
    """``{analysis: {"numbers": {path: value}} or {"error": "Type: first line"}}`` on the registered tiny LM."""
    from transformers import AutoTokenizer

    sys.path.insert(0, str(ROOT / "tests"))
    from _tiny_lms import register_tiny, tiny_llama

    from icr_interp import evaluate, load_pretrained_lm, score_templates
    from icr_interp.analysis.causal.causal_template import causal_template_test
    from icr_interp.analysis.causal.edge_knockout import edge_knockout
    from icr_interp.analysis.causal.function_vectors import function_vector_heads
    from icr_interp.analysis.causal.patching.by_role import patch_by_role
    from icr_interp.analysis.recall import recall_curve
    from icr_interp.analysis.causal.patching.heads import patch_heads
    from icr_interp.model.lm import cache as C
    from icr_interp.task.knowledge import KnowledgeBase
    from icr_interp.task.text import TextICRecallTask

    torch.set_num_threads(1)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(C.find_cache("smollm2-135m") / C.TOKENIZER)
    monkeypatch = pytest.MonkeyPatch()
    register_tiny(monkeypatch, Path(cache_dir), tiny_llama(len(tokenizer)), tokenizer, name="tiny-parity")
    model = load_pretrained_lm("tiny-parity", cache_dir=Path(cache_dir) / "cache")
    task = TextICRecallTask(KnowledgeBase.builtin("countries"), model, 2)
    relation = task.sample_pairs(8, "relation", seed=2)
    shuffle = task.sample_pairs(8, "shuffle", seed=4)
    calls = {
        "evaluate": lambda: evaluate(model, task, n_prompts=16, seed=0, batch_size=8),
        "recall_curve": lambda: recall_curve(model, task, ks=range(3), n_prompts=8, batch_size=8).to_dict(),
        "score_templates": lambda: score_templates(model, task.sample(8, seed=1)).to_dict(),
        "patch_by_role": lambda: patch_by_role(model, relation.clean, relation.corrupted).to_dict(),
        "patch_heads": lambda: patch_heads(model, relation.clean, relation.corrupted).to_dict(),
        "function_vector_heads": lambda: function_vector_heads(model, shuffle.clean, shuffle.corrupted).to_dict(),
        "edge_knockout": lambda: edge_knockout(model, relation.clean, "prediction", "answers", [1]).to_dict(),
        "causal_template_test": lambda: causal_template_test(
            model, relation.clean, heads=[(1, 0), (1, 2)], corrupted=relation.corrupted, n_null=2, seed=0).to_dict(),
    }
    out = {"model": type(model).__name__}
    for name, call in calls.items():
        try:
            out[name] = {"numbers": _flat(call())}
        except Exception as e:  # recorded: which analyses the bridge cannot run, and why
            out[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
    monkeypatch.undo()
    return out


def _other_line(tmp: Path) -> dict:
    python = ROOT / ".venv" / "bin" / "python"
    if not python.is_file():
        pytest.skip("no .venv (TransformerLens 3.x) beside .venv-tl4")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run([str(python), __file__, str(tmp / "three.json")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads((tmp / "three.json").read_text())


def compare(three: dict, four: dict) -> dict:
    """Per analysis: ``"same"`` (every number within 1e-4), the largest difference, or the 4.x error."""
    verdicts = {}
    for name, ref in three.items():
        if name == "model":
            continue
        got = four[name]
        if "error" in ref:
            verdicts[name] = f"fails on 3.x too: {ref['error']}"
        elif "error" in got:
            verdicts[name] = f"fails on the bridge: {got['error']}"
        else:
            # how the engine ran differs by design (suffix on 3.x, general on the bridge); the numbers must not
            a, b = ({k: v for k, v in d["numbers"].items() if not k.startswith(".strategies")} for d in (ref, got))
            nan_same = {k for k in a if a[k] != a[k] and b.get(k, 0) != b.get(k, 0)}
            diffs = [abs(a[k] - b[k]) for k in a if k in b and k not in nan_same]
            worst = max(diffs, default=0.0)
            keys_differ = set(a) != set(b)
            verdicts[name] = "same" if worst <= TOL and not keys_differ else (
                f"differs: max |diff| {worst:.3g}" + (" (other fields)" if keys_differ else ""))
    return verdicts


# Before the engine's bridge fallback (engine.strategy_for: general on a TransformerBridge) the suffix strategy
# ran on the bridge without an error but gave other numbers (max |diff| 6.3: it calls blocks with a key/value
# entry the bridge's blocks ignore); score_templates failed in combined_rows.ov_norms on grouped-query W_V
# until it read per-query-head weights (compat.per_head).
KNOWN_FAILURES: set[str] = set()  # analyses that do not run on the bridge yet


@pytest.fixture(scope="module")
def both_lines(tmp_path_factory):
    from icr_interp.model.lm import cache as C
    from icr_interp.tl import compat

    if compat.TL_LINE != 4:
        pytest.skip("the bridge exists on TransformerLens 4.x (make test-tl4)")
    if C.find_cache("smollm2-135m") is None:
        pytest.skip("SmolLM2's tokenizer is not in the cache (make setup converts it)")
    tmp = tmp_path_factory.mktemp("parity")
    return _other_line(tmp), analyses(str(tmp / "four"))


def test_text_analyses_on_the_bridge_equal_transformer_lens_3(both_lines):
    three, four = both_lines
    assert (three["model"], four["model"]) == ("HookedTransformer", "TransformerBridge")
    verdicts = compare(three, four)
    print(json.dumps(verdicts, indent=1))
    # every analysis gives 3.x's numbers within 1e-4 (patching through the engine's general strategy)
    assert not [name for name, v in verdicts.items() if v.startswith("differs")], verdicts
    failing = {name for name, v in verdicts.items() if v != "same"}
    assert failing <= KNOWN_FAILURES, verdicts
    for must_run in ("evaluate", "recall_curve", "score_templates", "patch_by_role", "patch_heads",
                     "function_vector_heads", "edge_knockout", "causal_template_test"):
        assert verdicts[must_run] == "same", verdicts


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as scratch:
        result = analyses(scratch)
    Path(sys.argv[1]).write_text(json.dumps(result))
