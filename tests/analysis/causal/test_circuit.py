"""Circuit summary: which component carries relation inference and which carries answer lookup."""

import json
import math
import warnings
from pathlib import Path

import pytest
from icr_interp.tl.compat import HookedTransformer, HookedTransformerConfig

from icr_interp import ICRecallTask, KnowledgeBase, build_model, load_checkpoint, save_checkpoint

from icr_interp.analysis.causal import ablation
from icr_interp.analysis.causal import patching as P
from icr_interp.analysis.causal.circuit_series import CircuitSeries
from icr_interp.analysis.causal.circuit import (CircuitRow, CircuitSummary, Component, circuit_components,
                                circuit_summary)
from icr_interp.training.trainer import finetune

N_PROMPTS = 128


@pytest.fixture(scope="module")
def reference(reference_checkpoint):
    ck = load_checkpoint(reference_checkpoint)
    batch = ck.task.sample(N_PROMPTS, seed=1)
    return ck.model, ck.task, batch, circuit_summary(ck.model, ck.task, batch, seed=2)


def no_hooks_left(model: HookedTransformer) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


# ------------------------------------------------------------ the reference model
def test_relation_inference_runs_through_the_context_pairs(reference):
    """Relation swap, measured (128 prompts): answers' values 0.991, both 0.991, subjects 0 (same tokens), query
    token 0; attention output, stage I and stage II 1.000; the query's pattern row 0.016 (what is copied matters,
    not where the query looks)."""
    _, _, _, s = reference
    assert s.baselines["relation"]["clean"] > 2 and s.baselines["relation"]["corrupted"] < -2
    assert s["context", "relation"] >= 0.9 and s["answers", "relation"] >= 0.9
    assert abs(s["subjects", "relation"]) < 1e-6  # a relation swap keeps every subject token
    assert abs(s["query", "relation"]) < 1e-6  # ... and the query token
    assert s["attn_out", "relation"] >= 0.9
    assert s["stage_I", "relation"] >= 0.9 and s["stage_II", "relation"] >= 0.9
    assert abs(s["pattern", "relation"]) < 0.1


def test_answer_lookup_runs_through_the_query_position(reference):
    """Query swap, measured: query token 1.000, stage II 1.000; context 0, attention output and stage I -0.001."""
    _, _, _, s = reference
    assert s["query", "lookup"] == pytest.approx(1.0, abs=1e-4)  # only the query token differs
    assert s["stage_II", "lookup"] >= 0.9
    for comp in ("subjects", "answers", "context"):
        assert abs(s[comp, "lookup"]) < 1e-6  # same context
    for comp in ("attn_out", "stage_I", "pattern"):
        assert abs(s[comp, "lookup"]) < 0.05  # the query's own token does not reach the memory via attention


def test_ablation_columns(reference):
    """Mean-ablation on clean prompts (base accuracy 1.000), measured accuracy: subjects' values 0.008, answers'
    0.086, both 0.008, query token 0.039, attention output 0.016, stage I 0.180, stage II 0.039; pattern row 1.000."""
    model, _, batch, s = reference
    assert s.base_accuracy > 0.95 and s.ablation_method == "mean"
    for comp in ("subjects", "answers", "context", "query", "attn_out", "stage_II"):
        assert s[comp, "ablated_accuracy"] < 0.3
        assert s[comp, "accuracy_drop"] == pytest.approx(s.base_accuracy - s[comp, "ablated_accuracy"])
    assert s["stage_I", "accuracy_drop"] > 0.5
    assert s["pattern", "accuracy_drop"] < 0.05  # the mean row is as good as each prompt's own
    # The value columns are icr_interp.analysis.causal.ablation's own ablations.
    for comp, role in (("subjects", "subjects"), ("answers", "answers")):
        assert s[comp, "ablated_accuracy"] == ablation.ablate_role_values(model, batch, role, "mean").accuracy
    assert s["stage_I", "ablated_accuracy"] == ablation.ablate_hook(model, batch, "blocks.0.mlp.hook_relation",
                                                                     "mean").accuracy
    assert no_hooks_left(model)


def test_verdict_is_computed_from_the_numbers(reference):
    _, _, _, s = reference
    relation, lookup = s.verdict.split("; answer lookup runs through ")
    assert relation.startswith("relation inference runs through attention to the context pairs (patched: "
                               "subjects unchanged by the swap, answers 0.9")  # its 0.00 is by construction
    assert "memory stage I (1.00)" in relation and "the query token" not in relation
    assert lookup.startswith("the query token (1.00) and memory stage II (1.00)")
    assert s.verdict.endswith("both jobs pass through memory stage II")


def test_summary_equals_role_patching(reference):
    """Each cell is patch_by_role's value for the same hook and role (all heads = the one head here)."""
    model, task, batch, s = reference
    for job, kind in (("relation", "relation"), ("lookup", "query")):
        corrupted = task.corrupt(batch, kind, seed=2)
        r = P.patch_by_role(model, batch, corrupted, hooks=["blocks.0.attn.hook_v", "blocks.0.hook_resid_pre",
                                                             "blocks.0.hook_attn_out", "blocks.0.mlp.hook_relation",
                                                             "blocks.0.hook_mlp_out"],
                            roles=["subjects", "answers", "context", "query", "prediction"])
        for comp, cell in (("subjects", ("blocks.0.attn.hook_v:h0", "subjects")),
                           ("answers", ("blocks.0.attn.hook_v:h0", "answers")),
                           ("context", ("blocks.0.attn.hook_v:h0", "context")),
                           ("query", ("blocks.0.hook_resid_pre", "query")),
                           ("attn_out", ("blocks.0.hook_attn_out", "prediction")),
                           ("stage_I", ("blocks.0.mlp.hook_relation", "prediction")),
                           ("stage_II", ("blocks.0.hook_mlp_out", "prediction"))):
            assert s[comp, job] == pytest.approx(r[cell], abs=1e-4), (comp, job)
        pattern = P.patch_pattern_by_role(model, batch, corrupted, roles=["context"])
        assert s["pattern", job] == pytest.approx(pattern["blocks.0.attn.hook_pattern:h0", "context"], abs=1e-4)
    assert no_hooks_left(model)


def test_to_dict_and_table(reference):
    _, _, _, s = reference
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert [r["component"] for r in d["rows"]] == s.components == [
        "subjects", "answers", "context", "query", "pattern", "attn_out", "stage_I", "stage_II"]
    assert d["columns"] == ["relation", "lookup", "ablated_accuracy", "accuracy_drop"]
    for row in d["rows"]:
        for col in d["columns"]:
            assert row[col] == pytest.approx(s[row["component"], col])
    assert d["verdict"] == s.verdict and d["n_prompts"] == N_PROMPTS and d["seed"] == 2
    assert d["baselines"]["lookup"]["reliable"] is True
    assert d["reliable"] is True and d["reason"] == "" and d["warnings"] == [] and d["reliability_z"] == 2.0
    assert d["chance"] == pytest.approx(1 / 64)
    for job in ("relation", "lookup"):  # measured: gap 17.4 +- 0.24 (relation), 18.6 +- 0.13 (lookup)
        b = d["baselines"][job]
        assert b["gap"] == pytest.approx(b["clean"] - b["corrupted"], abs=1e-4) and b["gap"] > 20 * b["gap_se"]
    assert d["rows"][6]["hook"] == "blocks.0.mlp.hook_relation" and d["rows"][3]["role"] == "query"
    text = str(s)
    assert all(r.component.label in text for r in s.rows) and text.endswith(f"verdict: {s.verdict}")
    assert f"{s['context', 'relation']:8.3f}" in text
    with pytest.raises(KeyError, match="no component 'heads'"):
        s["heads", "relation"]


def test_extra_notes_and_ablation_method(reference):
    model, task, batch, _ = reference
    s = circuit_summary(model, task, batch[:16], seed=5, ablation_method="zero", checkpoint="x", step=7)
    d = s.to_dict()
    assert d["checkpoint"] == "x" and d["step"] == 7 and d["ablation_method"] == "zero" and d["n_prompts"] == 16
    assert s["stage_I", "ablated_accuracy"] < 0.1  # no relation vector: nothing to look up
    with pytest.raises(ValueError, match="ablation method must be one of"):
        circuit_summary(model, task, batch[:4], ablation_method="median")
    assert no_hooks_left(model)


# ------------------------------------------------------------ other architectures
def test_any_number_of_layers_and_heads(shared_task):
    """Components sit in the last layer; the query token's share of the query swap is exactly 1 in any model."""
    model = build_model(shared_task, n_heads=2, n_layers=2)
    keys = [c.key for c in circuit_components(model)]
    assert keys == ["subjects", "answers", "context", "query", "pattern", "attn_out", "stage_I", "stage_II"]
    hooks = {c.key: c.hook for c in circuit_components(model)}
    assert hooks["context"] == "blocks.1.attn.hook_v" and hooks["stage_I"] == "blocks.1.mlp.hook_relation"
    assert hooks["query"] == "blocks.0.hook_resid_pre"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an untrained 2-layer model may barely react to a swap
        s = circuit_summary(model, shared_task, shared_task.sample(32, seed=0), seed=1)
    assert s["query", "lookup"] == pytest.approx(1.0, abs=1e-4)
    assert all(math.isfinite(s[c, col]) for c in s.components for col in ("relation", "lookup", "accuracy_drop"))
    assert no_hooks_left(model)


def test_missing_hooks_are_skipped():
    cfg = dict(n_layers=1, d_model=16, d_head=8, n_heads=2, n_ctx=6, d_vocab=20, act_fn="relu",
               normalization_type=None)
    attn_only = HookedTransformer(HookedTransformerConfig(**cfg, attn_only=True))
    assert [c.key for c in circuit_components(attn_only)] == ["subjects", "answers", "context", "query", "pattern",
                                                              "attn_out"]
    plain_mlp = HookedTransformer(HookedTransformerConfig(**cfg, d_mlp=32))
    assert "stage_I" not in [c.key for c in circuit_components(plain_mlp)]  # no relation stage: skipped


# ------------------------------------------------------------ verdicts and series (no model)
def _summary(values: dict, reliable: bool = True, drop: float = 0.0) -> CircuitSummary:
    rows = [CircuitRow(Component(k, k, f"hook.{k}", "query"), rel, look, 1.0 - drop, drop)
            for k, (rel, look) in values.items()]
    base = dict(clean=5.0, corrupted=-5.0, reliable=True)
    return CircuitSummary(rows, 1.0, dict(relation=dict(base, reliable=reliable), lookup=base), "mean", 8, 0)


def test_verdict_names_only_the_carriers():
    s = _summary(dict(answers=(0.95, 0.0), context=(0.97, 0.0), query=(0.0, 1.0), stage_I=(0.2, 0.0)))
    assert s.verdict == ("relation inference runs through attention to the context pairs (patched: answers 0.95, "
                         "both 0.97; mean-ablated accuracy drop: answers 0.00); answer lookup runs through the query "
                         "token (1.00)")
    none = _summary(dict(query=(0.1, 0.2)))
    assert "no single component carries relation inference" in none.verdict
    unreliable = _summary(dict(query=(300.0, 1.0), stage_II=(-50.0, 1.0)), reliable=False)
    assert unreliable.verdict.startswith("unreliable for relation inference: the relation swap barely moves the "
                                         "output (logit diff clean 5, corrupted -5), so no component is named; "
                                         "answer lookup runs through")
    assert "both jobs" not in unreliable.verdict  # nothing is shared with an undefined job
    assert not unreliable.reliable and unreliable.reason.startswith("relation inference: ")
    assert unreliable.warnings == ["query relation = 300.000 is outside [-0.1, 1.1]",
                                   "stage_II relation = -50.000 is outside [-0.1, 1.1]"]
    assert "warning: query relation = 300.000" in str(unreliable)


def test_a_model_at_chance_names_no_circuit():
    """With chance known, accuracy within Z binomial standard errors of it makes the whole verdict unreliable."""
    values = dict(context=(0.97, 0.0), query=(0.0, 1.0))
    at_chance = _summary(values)
    at_chance.base_accuracy, at_chance.chance = 0.1, 1 / 16  # 8 prompts: bound 1/16 + 2 x 0.086 = 0.233
    assert at_chance.verdict == ("unreliable: the model is near chance (accuracy 0.100 on 8 clean prompts, chance "
                                 "0.062; not 2 standard errors above it), so no circuit is named")
    assert not at_chance.reliable and at_chance.to_dict()["reason"] == at_chance.reason
    at_chance.base_accuracy = 0.3
    assert at_chance.reliable and at_chance.verdict.startswith("relation inference runs through")


def test_series_table():
    a = _summary(dict(context=(0.5, 0.0), query=(0.0, 1.0)))
    b = _summary(dict(context=(0.9, 0.0), query=(0.0, 1.0)), drop=0.25)
    series = CircuitSeries(["early", "late"], [0, 200], [a, b])
    assert series.components == ["context", "query"] and series.x() == [0.0, 200.0]
    assert series.values("context", "relation") == [0.5, 0.9]
    d = json.loads(json.dumps(series.to_dict()))
    assert d["steps"] == [0, 200] and d["series"]["context:relation"] == [0.5, 0.9]
    assert d["series"]["query:accuracy_drop"] == [0.0, 0.25] and len(d["summaries"]) == 2
    lines = series.to_csv().splitlines()
    assert lines[0].split(",")[:4] == ["name", "step", "base_accuracy", "context:relation"]
    assert lines[2].split(",")[:4] == ["late", "200", "1", "0.9"] and len(lines) == 3
    assert CircuitSeries(["a", "b"], [None, 3], [a, b]).x() == [0.0, 1.0]  # unknown step: by index
    with pytest.raises(ValueError, match="same length"):
        CircuitSeries(["a"], [0, 1], [a])


# ------------------------------------------------------------ reliability on real models
def test_a_random_stock_model_gets_an_unreliable_verdict(reference):
    """Random-weight stock HookedTransformers (LayerNorm, 1-2 layers) recall nothing: no circuit is named.

    Measured on the reference task (128 prompts): accuracy 0.000 for every one, chance 1/64; the swaps move the
    logit difference by less than 2 standard errors of its per-prompt spread (e.g. -0.045 +- 0.049).
    """
    model, task, batch, fine_tuned = reference
    assert fine_tuned.reliable and fine_tuned.verdict.startswith("relation inference runs through")
    vocab, n_pos = model.cfg.d_vocab, batch.tokens.shape[1]
    for layers, heads in ((1, 2), (2, 4)):
        cfg = HookedTransformerConfig(n_layers=layers, d_model=64, n_heads=heads, d_head=16, d_mlp=128,
                                      d_vocab=vocab, n_ctx=n_pos, act_fn="gelu", normalization_type="LN", seed=layers)
        stock = HookedTransformer(cfg)
        with pytest.warns(RuntimeWarning, match="circuit summary is unreliable: the model is near chance"):
            s = circuit_summary(stock, task, batch, seed=2)
        assert s.base_accuracy < 2 / task.kb.n_answers and not s.reliable
        assert s.verdict.startswith("unreliable: the model is near chance") and "runs through" not in s.verdict
        d = s.to_dict()
        assert d["reliable"] is False and d["reason"] == s.reason and d["verdict"] == s.verdict
    assert no_hooks_left(stock)


@pytest.mark.parametrize("bad", [-3, 100_000])
def test_bad_token_ids_give_one_line(reference, bad):
    model, task, batch, _ = reference
    small = batch[:8]
    tokens = small.tokens.clone()
    tokens[2, 4] = bad
    broken = type(small)(tokens, small.answers, small.relations, small.subjects, small.query, small.layout)
    with pytest.raises(ValueError) as err:
        circuit_summary(model, task, broken)
    assert "\n" not in str(err.value) and f"token id {bad}, outside the vocabulary [0, {model.cfg.d_vocab})" in str(
        err.value)
