"""The Bayes-optimal ceiling that evaluate reports (icr_interp.task.ceiling)."""

import torch

import icr_interp as ii
from icr_interp.task.ceiling import ceiling


def test_ambiguous_context_halves_the_ceiling():
    # (s1, a) is stored under both relations; s2's answer differs between them.
    kb = ii.KnowledgeBase.from_triplets([("s1", "r1", "a"), ("s1", "r2", "a"), ("s2", "r1", "b"), ("s2", "r2", "c")])
    task = ii.ICRecallTask(kb, n_pairs=1)
    batch = task.sample(256, seed=0)
    c = ceiling(task, batch)
    ambiguous = batch.subjects[:, 0] == 0  # context (s1, a): r1 or r2 equally likely
    assert torch.all(c[ambiguous] == 0.5) and torch.all(c[~ambiguous] == 1.0)


def test_unequal_relation_sizes_weight_the_posterior():
    # r2 knows 3 subjects, r1 knows 2: the same context (s1, a) is 3 x 2 / (2 x 1) = 3 times likelier under r1.
    kb = ii.KnowledgeBase.from_triplets([("s1", "r1", "a"), ("s2", "r1", "b"),
                                         ("s1", "r2", "a"), ("s2", "r2", "c"), ("s3", "r2", "d")])
    task = ii.ICRecallTask(kb, n_pairs=1)
    batch = task.sample(512, seed=1)
    c = ceiling(task, batch)
    pick = (batch.subjects[:, 0] == 0) & (batch.query == 1)
    assert pick.any() and torch.allclose(c[pick], torch.tensor(0.75))


def test_disjoint_answers_reach_one_and_evaluate_reports_it(disjoint_task):
    batch = disjoint_task.sample(128, seed=2)
    assert torch.all(ceiling(disjoint_task, batch) == 1.0)
    model = ii.build_model(disjoint_task)
    out = ii.evaluate(model, disjoint_task, n_prompts=64)
    assert out["ceiling"] == 1.0 and 0.0 <= out["accuracy"] <= out["ceiling"]


def test_sparse_relations_are_named_and_weighted_zero():
    import pytest

    facts = [(f"s{i}", "big", f"a{i}") for i in range(6)] + [("s0", "tiny", "b0"), ("s1", "tiny", "b1")]
    kb = ii.KnowledgeBase.from_triplets(facts)
    with pytest.warns(UserWarning, match="never sampled: tiny"):
        task = ii.ICRecallTask(kb, n_pairs=2)
    assert task.relation_weights.tolist() == [1.0, 0.0]
    assert set(task.sample(64, seed=0).relations.tolist()) == {0}
