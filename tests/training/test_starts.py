"""Starts and attention parametrisations (issue 9): a start that does not already solve the task.

Numbers measured with the commands in docs/results.md ("Starts").
"""

import torch
import torch.nn.functional as F

import icr_interp as ii
from icr_interp.training.trainer import trainable_names


def _task(S=32, R=4, k=3, seed=2):
    return ii.ICRecallTask(ii.KnowledgeBase.random(S, R, S, answer_overlap=1.0, seed=seed), n_pairs=k)


def _loss(model, batch):
    logits = model(batch.tokens)[torch.arange(len(batch)), batch.layout.query_end]
    return F.cross_entropy(logits, batch.answers)


def test_default_start_is_below_target_and_learns():
    task = _task()
    model = ii.build_model(task, seed=2)
    assert (model.icr_config.start, model.icr_config.init_tilt) == ("answer", 4.0)
    start = ii.evaluate(model, task, n_prompts=512, seed=2)["accuracy"]
    ii.finetune(model, task, n_samples=64, steps=150, lr=0.01, seed=2, progress=False)
    end = ii.evaluate(model, task, n_prompts=512, seed=2)["accuracy"]
    assert start < 0.8 and end >= 0.95  # measured 0.758 -> 0.986


def test_subject_start_is_symmetric_to_the_answer_start():
    task = _task()
    answer = ii.build_model(task, seed=2, start="answer")
    subject = ii.build_model(task, seed=2, start="subject")
    batch = task.sample(64, seed=5)
    rows = [ii.score_templates(m, batch).to_dict()["mean_row"] for m in (answer, subject)]
    assert rows[0]["balance"] < 0.2 and rows[1]["balance"] < 0.2  # both far from the pairwise split
    a, s = (ii.evaluate(m, task, n_prompts=512, seed=2)["accuracy"] for m in (answer, subject))
    assert a < 0.8 and s < 0.8


def test_sink_start_is_dead():
    """All attention near BOS: no stage-I neuron reaches threshold, so every ReLU is off and the gradient is 0."""
    task = _task()
    model = ii.build_model(task, seed=2, start="sink")
    batch = task.sample(64, seed=5)
    names = trainable_names(model)
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(_loss(model, batch), [params[n] for n in names], allow_unused=True)
    live = ii.build_model(task, seed=2)  # the default (answer) start, for scale
    params = dict(live.named_parameters())
    live_grads = torch.autograd.grad(_loss(live, batch), [params[n] for n in names], allow_unused=True)
    dead = max(float(g.abs().max()) for g in grads if g is not None)
    alive = max(float(g.abs().max()) for g in live_grads if g is not None)
    assert dead < 1e-6 < 1e-3 < alive  # float rounding only: the output directions are orthogonal to the inputs
    assert ii.evaluate(model, task, n_prompts=256)["accuracy"] < 0.1


def test_positional_attention_has_a_size_free_parameter_count():
    counts = []
    for S in (16, 64):
        model = ii.build_model(_task(S=S, k=2), attention="positional")
        assert model.blocks[0].attn.W_Q.shape == (1, model.cfg.d_model, model.cfg.d_model)  # TL's layout
        counts.append(sum(p.numel() for n, p in model.named_parameters() if n in trainable_names(model)))
    assert counts[0] == counts[1] == 2 * 6 * 6  # A_Q and A_K: n_ctx x n_ctx each


def test_positional_start_matches_the_full_start_at_the_query():
    task = _task()
    batch = task.sample(32, seed=1)
    rows = [ii.score_templates(ii.build_model(task, attention=a, init_scale=0.0), batch).to_dict()["mean_row"]
            for a in ("full", "positional")]
    assert abs(rows[0]["balance"] - rows[1]["balance"]) < 1e-4


def test_positional_attention_learns_and_round_trips(tmp_path):
    task = _task()
    model = ii.build_model(task, attention="positional", seed=2)
    ii.finetune(model, task, n_samples=64, steps=150, lr=0.01, seed=2, progress=False)
    assert ii.evaluate(model, task, n_prompts=512, seed=2)["accuracy"] >= 0.95  # measured 0.992
    ck = ii.load_checkpoint(ii.save_checkpoint(tmp_path / "pos", model, task))
    tokens = task.sample(16, seed=0).tokens
    assert torch.equal(ck.model(tokens), model(tokens))
    assert torch.equal(ck.model.blocks[0].attn.W_Q, model.blocks[0].attn.W_Q)


def test_positional_attention_with_finetune_defaults_is_pairwise_per_example():
    """finetune's default recipe follows the parametrisation (positional: lr 0.1, cosine decay): pairwise per example.

    40 x 5, k = 3, seed 11 (docs/results.md, "Positional attention"): accuracy 0.732 -> 0.999,
    per-example pairwise 0.987 against a null of 0.827.
    """
    task = ii.ICRecallTask(ii.KnowledgeBase.random(40, 5, 40, answer_overlap=1.0, seed=11), n_pairs=3)
    model = ii.build_model(task, attention="positional", seed=11)
    ii.finetune(model, task, progress=False)
    assert (model.icr_train.lr, model.icr_train.schedule) == (0.1, "cosine")
    assert ii.evaluate(model, task, n_prompts=1024, seed=111)["accuracy"] >= 0.98
    scores = ii.score_templates(model, task.sample(256, seed=211)).to_dict()
    assert scores["best"] == "pairwise" and scores["pairwise"] >= 0.95
    assert scores["pairwise"] - scores["pairwise_null"] >= 0.1 and scores["p_value"] <= 0.01


def test_default_recipe_follows_the_parametrisation():
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from icr_interp.training.trainer import default_recipe

    task = _task()
    assert default_recipe(ii.build_model(task)) == dict(lr=0.003, schedule="constant")
    assert default_recipe(ii.build_model(task, attention="positional")) == dict(lr=0.1, schedule="cosine")
    stock = HookedTransformer(HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20,
                                                      act_fn="relu"))
    assert default_recipe(stock)["lr"] == 0.003  # a model not built here: the full parametrisation's
    model = ii.build_model(task)
    ii.finetune(model, task, n_samples=8, steps=1, progress=False)
    assert (model.icr_train.lr, model.icr_train.schedule) == (0.003, "constant")
    ii.finetune(model, task, n_samples=8, steps=1, lr=0.05, progress=False)
    assert model.icr_train.lr == 0.05


def test_cosine_schedule_changes_training_and_bad_schedules_are_refused():
    import pytest

    task = _task()
    ends = []
    for schedule in ("constant", "cosine"):
        model = ii.build_model(task, seed=1)
        ii.finetune(model, task, n_samples=16, steps=4, lr=0.05, schedule=schedule, progress=False)
        assert model.icr_train.schedule == schedule
        ends.append(model.blocks[0].attn.W_Q.detach().clone())
    assert not torch.equal(*ends)  # the decayed steps are smaller
    with pytest.raises(ValueError, match="schedule must be one of"):
        ii.finetune(ii.build_model(task), task, n_samples=8, steps=1, schedule="linear", progress=False)


def test_fields_added_later_stay_out_of_the_key_at_their_default():
    """Cached sweeps keep their keys: train.schedule and knowledge.builtin are not in RunConfig.key while None."""
    import dataclasses
    import hashlib
    import json

    config = ii.RunConfig.from_preset("tiny", seed=3)
    data = dataclasses.asdict(config)
    del data["train"]["schedule"], data["knowledge"]["builtin"]
    old = hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
    assert config.key == old
    assert config.with_overrides(**{"train.schedule": "cosine"}).key != old
    assert config.with_overrides(**{"knowledge.builtin": "countries"}).key != old


def test_a_given_lr_keeps_a_constant_schedule_unless_one_is_named():
    """None means what configs written before schedules existed ran (their cached sweep runs stay valid)."""
    task = _task()
    for kwargs, expected in ((dict(), (0.1, "cosine")), (dict(lr=0.003), (0.003, "constant")),
                             (dict(schedule="constant"), (0.1, "constant")), (dict(lr=0.02, schedule="cosine"),
                                                                               (0.02, "cosine"))):
        model = ii.build_model(task, attention="positional")
        ii.finetune(model, task, n_samples=8, steps=1, progress=False, **kwargs)
        assert (model.icr_train.lr, model.icr_train.schedule) == expected, kwargs
