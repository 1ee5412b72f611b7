"""Smoke test of the whole toolkit on whichever TransformerLens line is installed (run by CI on 4.x too).

One model on a knowledge base no other test uses (64 subjects x 8 relations,
64 shared answers, knowledge seed 5, k = 4) with a strong answer tilt
(``init_tilt=4``), so that it starts far from the task: import, build,
fine-tune to >= 0.95 held-out accuracy, checkpoint round trip with identical
logits, template scores, the five ``icr_interp.analysis.causal.patching`` drop-ins equal to
``transformer_lens.patching`` within 1e-4 (and faster), a circuitsvis view.
Measured (TransformerLens 3.9 and 4.3 give the same numbers bit for bit):
accuracy 0.465 -> 0.996, per-example pairwise 0.887 (balance 0.773), mean
row pairwise 0.971; about a minute on one core.
"""

import os
import time

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching's per-cell progress bars
import transformer_lens.patching as tl_patching  # noqa: E402

import icr_interp  # noqa: E402
from icr_interp import ICRecallTask, KnowledgeBase, build_model, evaluate, finetune, viz  # noqa: E402
from icr_interp.tl import compat
from icr_interp.analysis.causal import patching as P  # noqa: E402

DROP_INS = ("get_act_patch_resid_pre", "get_act_patch_attn_out", "get_act_patch_mlp_out",
            "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_pattern_dest_src_pos")
TOL = 1e-4


@pytest.fixture(scope="module")
def trained():
    """The smoke model before and after a short fine-tune: (task, model, start metrics, end metrics)."""
    task = ICRecallTask(KnowledgeBase.random(64, 8, 64, 1.0, seed=5), n_pairs=4)
    model = build_model(task, seed=5, init_tilt=4.0)
    start = evaluate(model, task, n_prompts=512)
    finetune(model, task, n_samples=1024, steps=150, progress=False)
    return task, model, start, evaluate(model, task, n_prompts=512, seed=1)


def test_imports_and_builds_on_this_line(trained):
    _, model, _, _ = trained
    assert icr_interp.__version__ and compat.TL_LINE in (3, 4)
    assert isinstance(model, compat.ModelBase) and isinstance(model, icr_interp.ICRModel)
    assert model.W_Q.shape == (1, 1, model.cfg.d_model, model.cfg.d_model)  # [layer head d_model d_head]
    assert "blocks.0.mlp.hook_relation" in model.hook_dict and "blocks.0.attn.hook_attn_scores" in model.hook_dict


def test_finetune_learns_from_a_far_start(trained):
    _, _, start, end = trained
    assert start["accuracy"] < 0.7  # measured 0.465: the tilted start does not solve the task
    assert end["accuracy"] >= 0.95  # measured 0.996
    assert end["loss"] < 0.1 * start["loss"]  # 2.35 -> 0.049


def test_checkpoint_round_trip(trained, tmp_path):
    task, model, _, _ = trained
    path = icr_interp.save_checkpoint(tmp_path / "smoke", model, task)
    loaded = icr_interp.load_checkpoint(path).model
    tokens = task.sample(32, seed=8).tokens
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))
    assert list(loaded.hook_dict) == list(model.hook_dict)


def test_template_scores_find_the_pairwise_pattern(trained):
    task, model, _, _ = trained
    scores = icr_interp.score_templates(model, task.sample(256, seed=9)).headline()
    assert scores["best"] == "pairwise" and scores["mean_row_best"] == "pairwise"
    assert scores["pairwise"] > 0.8 and scores["mean_row_pairwise"] > 0.9  # measured 0.887 / 0.971
    assert scores["pair_mass"] > 0.99


def test_drop_ins_equal_transformer_lens_and_are_faster(trained):
    task, model, _, _ = trained
    clean = task.sample(32, seed=10)
    corrupted = task.corrupt(clean, "relation", seed=11)
    metric = P.logit_diff_metric(clean.answers, corrupted.answers, clean.layout.query_end)
    _, cache = model.run_with_cache(clean.tokens)
    ours_s = theirs_s = 0.0
    for name in DROP_INS:
        t0 = time.perf_counter()
        ref = getattr(tl_patching, name)(model, corrupted.tokens, cache, metric)
        t1 = time.perf_counter()
        ours = getattr(P, name)(model, corrupted.tokens, cache, metric)
        t2 = time.perf_counter()
        theirs_s, ours_s = theirs_s + t1 - t0, ours_s + t2 - t1
        assert ref.abs().max() > 0.1, name  # the relation swap moves the metric
        assert ours.shape == ref.shape and torch.allclose(ours, ref, atol=TOL, rtol=0), name
        general = getattr(P, name)(model, corrupted.tokens, cache, metric, fast=False)
        assert torch.allclose(general, ref, atol=TOL, rtol=0), name
    print(f"five drop-ins on TransformerLens {compat.TL_VERSION}: transformer_lens {theirs_s:.2f} s, "
          f"icr_interp {ours_s:.2f} s ({theirs_s / ours_s:.1f}x)")
    assert theirs_s > 5 * ours_s  # measured 10.5x on 4.3 (21.1 s vs 2.0 s), 2 shared cores


def test_circuitsvis_view_renders_offline(trained):
    task, model, _, _ = trained
    view = viz.attention_view(model, task.sample(4, seed=12), vocab=task)
    src = str(view)
    assert "var CircuitsVis=" in src and "unpkg" not in src  # the bundle is inlined: no network
    assert "L0H0" in src
