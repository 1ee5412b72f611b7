"""The causal template test: templates written into the prediction row recover the answer on the reference model.

Measured on the reference model (paper preset, 200 steps; 256 prompts, beta "fit", within span "last"):
log-probability recovered -- own 1.000, pairwise 1.001, re-paired null 0.904 (max 0.908), uniform 0.811,
answers-only 0.347, subjects-only 0.321; relation-swap logit difference -- pairwise 1.04, null 0.68.
"""

import warnings

import pytest
import torch

from icr_interp.analysis.causal.causal_template import causal_template_test
from icr_interp.model.builder import build_model
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask
from icr_interp.training.trainer import finetune, prediction_logits

N_PROMPTS = 128


@pytest.fixture(scope="module")
def reference():
    """The reference model (the paper preset: 64 facts per relation, 8 relations, k = 4), fine-tuned 200 steps."""
    task = ICRecallTask(KnowledgeBase.random(64, 8, 64, 1.0, seed=0), n_pairs=4)
    model = build_model(task)
    finetune(model, task, steps=200, seed=0, progress=False)
    return model, task, task.sample(N_PROMPTS, seed=1)


def no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def test_pairwise_recovers_and_beats_its_null(reference):
    model, _, batch = reference
    r = causal_template_test(model, batch, heads=[(0, 0)])
    assert r.metric == "logprob" and r.clean > r.base + 2
    assert r.recovered["own"] == pytest.approx(1.0, abs=1e-4)  # the head's own row is the clean run
    assert r.recovered["pairwise"] >= 0.9 and r.beats_null
    assert r.recovered["pairwise"] > max(r.recovered["answers"], r.recovered["subjects"], r.recovered["uniform"])
    assert r.recovered["answers"] < 0.6 and r.recovered["subjects"] < 0.6  # one member of each pair is not enough
    assert len(r.null_recovered) == 8 and r.accuracy["pairwise"] >= 0.95
    assert no_hooks_left(model)
    d = r.to_dict()
    assert d["beats_null"] and d["heads"] == [[0, 0]] and "pairwise" in str(r)


def test_relation_swap_logit_difference(reference):
    model, task, batch = reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        clean, corrupted, _ = task.corrupt_pairs(batch, "relation", seed=2)
    r = causal_template_test(model, clean, heads=[(0, 0)], corrupted=corrupted, n_null=4)
    assert r.metric == "logit_diff" and r.recovered["pairwise"] >= 0.9 and r.beats_null
    assert r.null_mean < r.recovered["pairwise"] - 0.1


def test_uniform_beta_makes_the_null_the_template(reference):
    """With equal weights across pairs a re-pairing moves nothing: the null equals the pairwise template."""
    model, _, batch = reference
    r = causal_template_test(model, batch[:32], heads=[(0, 0)], beta="uniform", n_null=2)
    assert all(v == pytest.approx(r.recovered["pairwise"], abs=1e-5) for v in r.null_recovered)
    assert r.recovered["pairwise"] == pytest.approx(r.recovered["uniform"], abs=1e-5)


def test_prediction_logits_match_the_full_forward(reference):
    model, _, batch = reference
    full = model(batch.tokens)[torch.arange(len(batch)), batch.layout.pred_pos]
    assert torch.allclose(prediction_logits(model, batch), full, atol=1e-4)


def test_stock_model_and_errors(reference):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    _, task, batch = reference
    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=16,
                                  d_vocab=task.vocab.size, act_fn="gelu", normalization_type="LN", seed=0)
    stock = HookedTransformer(cfg).eval()
    r = causal_template_test(stock, batch[:16], heads=[(1, 0), (0, 1)], within_span="uniform", n_null=2)
    assert r.heads == ((0, 1), (1, 0)) and r.recovered["own"] == pytest.approx(1.0, abs=1e-3)
    for bad in ([(2, 0)], [(0, 5)], []):
        with pytest.raises(ValueError, match="head"):
            causal_template_test(stock, batch[:4], heads=bad)
    with pytest.raises(ValueError, match="metric"):
        causal_template_test(stock, batch[:4], heads=[(0, 0)], metric="logit_diff")
    with pytest.raises(ValueError, match="beta"):
        causal_template_test(stock, batch[:4], heads=[(0, 0)], beta="flat")


def test_a_model_at_chance_gets_a_reliability_warning(reference):
    """Targets the model does not predict (at chance on them): the recovered fractions mean nothing, and the
    result says so (as patch_by_role does)."""
    from dataclasses import replace

    model, _, batch = reference
    wrong = replace(batch, answers=batch.answers.roll(1))  # another prompt's answer: accuracy near 0
    with pytest.warns(RuntimeWarning, match="unreliable: the model is near chance"):
        r = causal_template_test(model, wrong, heads=[(0, 0)], n_null=0)
    assert not r.reliable and "near chance" in r.reason and "UNRELIABLE" in str(r)
    assert r.to_dict()["reliable"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # its own targets: no warning
        assert causal_template_test(model, batch, heads=[(0, 0)], n_null=0).reliable
