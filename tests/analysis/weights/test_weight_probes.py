"""Weight-only probes (icr_interp.analysis.weights.weight_probes) against behaviour on tiny models."""

import pytest
import torch

from icr_interp import build_model, finetune
from icr_interp.analysis.scoring.attention import query_rows
from icr_interp.analysis.weights.weight_probes import (WeightProbeTracker, behavioural_recall, memory_correct,
                                               pairwise_effect, per_fact_prompts, weight_probes)
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask
from icr_interp.training.trainer import prediction_logits


@pytest.fixture(scope="module")
def task():
    return ICRecallTask(KnowledgeBase.random(16, 4, 16, seed=0, mapping="balanced"), n_pairs=2)


@pytest.fixture(scope="module")
def tuned(task):
    """Three fine-tuned toy models (seeds 0, 1, 2)."""
    models = []
    for seed in range(3):
        model = build_model(task, seed=seed)
        finetune(model, task, n_samples=256, steps=40, lr=0.01, seed=seed, progress=False)
        models.append(model)
    return models


def test_no_prompt_runs_through_the_model(task):
    model = build_model(task)
    fired = []
    with model.hooks(fwd_hooks=[(lambda name: True, lambda act, hook: fired.append(hook.name))]):
        probes = weight_probes(model, task, n_prompts=64)
        assert not fired
        model(task.sample(2, seed=0).tokens)  # the counter works: a forward fires every hook point
    assert fired
    d = probes.to_dict()
    assert {"memory", "qk", "ov"} <= set(d) and "accuracy" in d["memory"] and "pairwise_effect" in d["qk"]


def test_memory_probe_equals_behavioural_recall_per_fact(task, tuned):
    for model in tuned:
        correct, _ = memory_correct(model, task)
        assert abs(float(correct.mean()) - behavioural_recall(model, task)) <= 0.01
    # a planted fault: 3 stage-II neurons write another fact's answer; both readings lose exactly those facts
    model = build_model(task)
    with torch.no_grad():
        model.blocks[-1].mlp.W_out[[0, 5, 9]] = model.blocks[-1].mlp.W_out[[1, 6, 10]].clone()
    correct, _ = memory_correct(model, task)
    batch = per_fact_prompts(task)
    behaved = (prediction_logits(model, batch).argmax(-1) == batch.answers).float()
    assert correct.sum() == len(correct) - 3
    assert torch.equal(correct, behaved)


def test_qk_effect_has_the_measured_sign_and_vanishes_on_a_random_model(task, tuned):
    batch = task.sample(256, seed=1)
    for model in tuned:
        predicted = weight_probes(model, task, n_prompts=256, seed=1).qk["pairwise_effect"]
        measured = pairwise_effect(query_rows(model, batch)[-1], batch)["pairwise_effect"]
        assert measured > 0.002 and predicted > 0.002
        assert abs(predicted - measured) < 1e-4  # one layer, no LayerNorm: the QK prediction is exact
    random = build_model(task, seed=3, init_tilt=0.0, init_scale=0.3)
    predicted = weight_probes(random, task, n_prompts=256, seed=1).qk
    measured = pairwise_effect(query_rows(random, batch)[-1], batch)["pairwise_effect"]
    assert abs(predicted["pairwise_effect"]) < 0.01 and abs(measured) < 0.01
    assert predicted["pairwise"][0] < 0.9  # the random rows are not pairwise, and the null knows it


def test_ov_probe_reads_the_copy_and_sees_it_broken(task):
    model = build_model(task)
    ov = weight_probes(model, task, n_prompts=16).ov
    assert ov["subject"]["context_copy"] == [1.0] and ov["answer"]["context_copy"] == [1.0]
    assert ov["answer"]["relation_share"][0] < 1e-3  # the copy writes context directions, not relations
    # what attention writes at the query equals the pattern-weighted OV images the probe reads
    batch = task.sample(8, seed=0)
    _, cache = model.run_with_cache(batch.tokens)
    x = model.W_E[batch.tokens] + model.W_pos[: batch.tokens.shape[1]]
    v = torch.einsum("bpd,hde,hef->bhpf", x, model.blocks[0].attn.W_V, model.blocks[0].attn.W_O)
    q = batch.layout.query_end
    written = torch.einsum("bhp,bhpf->bf", cache["blocks.0.attn.hook_pattern"][torch.arange(8), :, q], v)
    assert torch.allclose(written, cache["blocks.0.hook_attn_out"][torch.arange(8), q], atol=1e-4)
    with torch.no_grad():
        model.blocks[0].attn.W_V.copy_(torch.randn(model.blocks[0].attn.W_V.shape, generator=torch.Generator().manual_seed(0)))
    assert weight_probes(model, task, n_prompts=16).ov["answer"]["context_copy"][0] < 0.5


def test_tracker_logs_the_three_probes_over_training(task):
    model = build_model(task)
    tracker = WeightProbeTracker(task, every=10, n_prompts=64)
    finetune(model, task, n_samples=128, steps=20, lr=0.01, callback=tracker, progress=False)
    assert [row["step"] for row in tracker.series] == [0, 10]
    assert all({"memory", "qk", "ov"} <= set(row) for row in tracker.series)


def test_weight_probes_refuses_a_model_without_a_memory(task):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    plain = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=8, d_vocab=40,
                                                      act_fn="relu"))
    with pytest.raises(ValueError, match="IC-recall model"):
        weight_probes(plain, task)


# ----------------------------------------------------------------- OV read-out (Geva et al. 2023)
def planted_extraction_model(task):
    """A 1-layer attention-only model in one-hot coordinates whose head 0 maps each subject token to its
    answer under relation 0 (an attribute-extraction OV circuit); head 1 is random."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    V = task.vocab.size
    cfg = HookedTransformerConfig(n_layers=1, d_model=V, n_heads=2, d_head=V, n_ctx=task.n_ctx, d_vocab=V,
                                  attn_only=True, normalization_type=None, act_fn="relu", seed=0)
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.embed.W_E.copy_(torch.eye(V))
        model.pos_embed.W_pos.zero_()
        model.unembed.W_U.copy_(torch.eye(V))
        model.unembed.b_U.zero_()
        attn = model.blocks[0].attn
        for b in (attn.b_V, attn.b_O):
            b.zero_()
        s = task.vocab.subject_token(torch.arange(task.kb.n_subjects))
        a = task.vocab.answer_token(task.kb.table[0])
        W_V = torch.zeros(V, V)
        W_V[s, a] = 1.0
        attn.W_V[0].copy_(W_V)
        attn.W_V[1].copy_(torch.randn(V, V, generator=gen))
        attn.W_O.copy_(torch.eye(V).expand(2, V, V))
    return model


def test_ov_readout_finds_a_planted_extraction_head(task):
    from icr_interp.analysis.weights.ov_readout import ov_readout

    model = planted_extraction_model(task)
    batch = task.sample(64, seed=0)
    batch = batch[batch.relations == 0]
    out = ov_readout(model, batch)
    assert out.rank[0, 0] == 0 and out.null_rank[0, 0] >= 1  # the right answer on top, another answer not
    assert out.top(1)[0]["head"] == "L0H0" and out.rank[0, 1] > 0
    assert out.copy_rank[0, 0] > 0  # it extracts, it does not copy
    assert {"top", "rank", "null_rank"} <= set(out.to_dict())


@pytest.mark.filterwarnings("ignore:.*share their first token")
def test_head_ov_is_what_the_head_writes_when_it_attends_to_the_source(tiny_smol_llama):
    from icr_interp.analysis.weights.ov_readout import head_ov
    from icr_interp.task.text import TextICRecallTask

    model = tiny_smol_llama
    task = TextICRecallTask(KnowledgeBase.builtin("countries"), model.tokenizer, n_pairs=2)
    b = task.sample(4, seed=0)
    rows, src = torch.arange(4), b.layout.query_end

    def one_hot(pattern, hook):  # every head's prediction row on the query subject's last token only
        pattern[rows, :, b.layout.pred_pos] = 0.0
        pattern[rows, :, b.layout.pred_pos, src] = 1.0
        return pattern

    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_pattern", one_hot)]):
        _, cache = model.run_with_cache(b.tokens)
    written = torch.einsum("bhe,hef->bhf", cache["blocks.1.attn.hook_z"][rows, b.layout.pred_pos],
                           model.blocks[1].attn.W_O)
    predicted = head_ov(model.blocks[1].attn, model.blocks[1].ln1(cache["blocks.1.hook_resid_pre"])[rows, src])
    assert torch.allclose(written, predicted, atol=1e-4)


def test_probe_series_logs_weights_beside_behaviour(task):
    from icr_interp.analysis.weights.weight_probes import probe_series

    series = probe_series(build_model(task), task, every=10, n_prompts=64, steps=20, n_samples=128, lr=0.01)
    assert [row["step"] for row in series] == [0, 10, 20]
    last = series[-1]
    assert abs(last["qk"]["pairwise_effect"] - last["measured_pairwise_effect"]) < 1e-4
    assert abs(last["memory"]["accuracy"] - last["behaviour_recall"]) <= 0.01
