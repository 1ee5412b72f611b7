"""IC-recall prompts: determinism, consistency with the knowledge base, layout, corruptions, vocabulary."""

import pytest
import torch

from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ROLE_NAMES, ICRecallTask
from icr_interp.task.vocab import BOS, Vocabulary

B = 64  # prompts per sampled batch


def assert_consistent(task: ICRecallTask, batch) -> None:
    """Every prompt's tokens, answers and target agree with the knowledge base and the layout."""
    v, table = task.vocab, task.kb.table
    n = len(batch)
    rows = torch.arange(n)
    lay = batch.layout
    ctx_answers = table[batch.relations[:, None], batch.subjects]  # a_i = a*(s_i, r)
    assert (ctx_answers >= 0).all()
    assert torch.equal(batch.tokens[rows[:, None], lay.subject_end], batch.subjects + v.subject_offset)
    assert torch.equal(batch.tokens[rows[:, None], lay.answer_end], ctx_answers + v.answer_offset)
    assert torch.equal(batch.tokens[rows, lay.query_end], batch.query + v.subject_offset)
    assert torch.equal(batch.answers, table[batch.relations, batch.query] + v.answer_offset)
    if task.bos:
        assert (batch.tokens[rows, lay.bos_pos] == v.bos).all()
    else:
        assert (lay.bos_pos == -1).all() and not (batch.tokens == v.bos).any()
    # k + 1 distinct subjects per prompt: the query is not in the context.
    all_subjects = torch.cat([batch.subjects, batch.query[:, None]], dim=1)
    assert all(len(set(row)) == task.n_pairs + 1 for row in all_subjects.tolist())


# ------------------------------------------------------------------ sample
def test_same_seed_same_batch_other_seed_other_batch(shared_task):
    a, b, c = shared_task.sample(B, seed=5), shared_task.sample(B, seed=5), shared_task.sample(B, seed=6)
    for name in ("tokens", "answers", "relations", "subjects", "query"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.tokens, c.tokens)


def test_generator_advances_and_matches_seed(shared_task):
    gen = torch.Generator().manual_seed(5)
    first, second = shared_task.sample(B, generator=gen), shared_task.sample(B, generator=gen)
    assert torch.equal(first.tokens, shared_task.sample(B, seed=5).tokens)
    assert not torch.equal(first.tokens, second.tokens)


def test_sampling_is_explicit(shared_task):
    with pytest.raises(ValueError, match="seed or a torch.Generator"):
        shared_task.sample(4)
    batch = shared_task.sample(4, seed=0)
    with pytest.raises(ValueError, match="seed or a torch.Generator"):
        shared_task.corrupt(batch, "query")
    with pytest.raises(ValueError, match="seed or a torch.Generator"):
        shared_task.sample_facts(4)


@pytest.mark.parametrize("task_name", ["shared_task", "disjoint_task"])
def test_every_prompt_matches_the_knowledge_base(task_name, request):
    task = request.getfixturevalue(task_name)
    batch = task.sample(256, seed=1)
    assert batch.tokens.shape == (256, task.n_ctx) == (256, 6)
    assert_consistent(task, batch)
    # All 4 relations and most subjects occur: the sampler is not stuck.
    assert set(batch.relations.tolist()) == {0, 1, 2, 3}
    assert len(set(batch.query.tolist())) == 16


@pytest.mark.parametrize("n_pairs, bos", [(1, True), (3, False), (5, True)])
def test_layout_for_other_geometries(shared_kb, n_pairs, bos):
    task = ICRecallTask(shared_kb, n_pairs=n_pairs, bos=bos)
    batch = task.sample(32, seed=2)
    assert task.n_ctx == 2 * n_pairs + 1 + int(bos) == batch.tokens.shape[1]
    off = int(bos)
    assert batch.layout.subject_end[0].tolist() == [off + 2 * i for i in range(n_pairs)]
    assert batch.layout.answer_end[0].tolist() == [off + 2 * i + 1 for i in range(n_pairs)]
    assert (batch.layout.query_end == task.n_ctx - 1).all()
    assert_consistent(task, batch)
    roles = batch.layout.role_of_positions(task.n_ctx)
    expected = ([ROLE_NAMES.index("bos")] if bos else []) + [1, 2] * n_pairs + [3]
    assert (roles == torch.tensor(expected)).all()


def test_sparse_kb_uses_only_known_facts():
    # Relation q knows only 2 subjects: too few for k=2 (needs 3), so only p is usable.
    kb = KnowledgeBase.from_triplets([(s, "p", f"a{i % 3}") for i, s in enumerate("vwxyz")]
                                     + [("v", "q", "a0"), ("w", "q", "a1")])
    task = ICRecallTask(kb, n_pairs=2)
    batch = task.sample(50, seed=0)
    assert (batch.relations == 0).all()
    assert_consistent(task, batch)
    with pytest.raises(ValueError, match="no relation has the 6 subjects"):
        ICRecallTask(kb, n_pairs=5)
    with pytest.raises(ValueError, match="n_pairs"):
        ICRecallTask(kb, n_pairs=0)


def test_batch_indexing_and_device(shared_task):
    batch = shared_task.sample(10, seed=3)
    sub = batch[torch.tensor([1, 4, 7])]
    assert len(sub) == 3 and torch.equal(sub.tokens, batch.tokens[[1, 4, 7]])
    assert torch.equal(sub.layout.query_end, batch.layout.query_end[[1, 4, 7]])
    one = batch[2]  # an integer index keeps a batch of one
    assert len(one) == 1 and torch.equal(one.tokens[0], batch.tokens[2])
    assert torch.equal(batch[-1].tokens[0], batch.tokens[9])
    assert len(batch[batch.relations == batch.relations[0]]) == int((batch.relations == batch.relations[0]).sum())
    moved = batch.to("cpu")
    assert torch.equal(moved.tokens, batch.tokens) and moved.layout.query_end.device.type == "cpu"


# ----------------------------------------------------------------- corrupt
def test_relation_corruption(shared_task):
    clean = shared_task.sample(B, seed=4)
    bad = shared_task.corrupt(clean, "relation", seed=0)
    assert torch.equal(bad.subjects, clean.subjects) and torch.equal(bad.query, clean.query)
    assert (bad.relations != clean.relations).all()
    assert_consistent(shared_task, bad)
    lay = clean.layout
    rows = torch.arange(B)[:, None]
    assert torch.equal(bad.tokens[rows, lay.subject_end], clean.tokens[rows, lay.subject_end])
    assert torch.equal(bad.tokens[:, -1], clean.tokens[:, -1])
    # This KB's relations are bijections that agree on no subject (checked here), so another
    # relation gives every subject another answer.
    table = shared_task.kb.table
    assert not (table[:, None, :] == table[None, :, :]).any(-1).fill_diagonal_(False).any()
    assert (bad.tokens[rows, lay.answer_end] != clean.tokens[rows, lay.answer_end]).all()
    assert (bad.answers != clean.answers).all()
    assert torch.equal(bad.layout.answer_end, clean.layout.answer_end)
    assert torch.equal(shared_task.corrupt(clean, "relation", seed=0).relations, bad.relations)


def test_relation_corruption_on_disjoint_kb_moves_every_answer(disjoint_task):
    clean = disjoint_task.sample(B, seed=4)
    bad = disjoint_task.corrupt(clean, "relation", seed=1)
    assert_consistent(disjoint_task, bad)
    sets = disjoint_task.kb.answer_sets()
    for r, a in zip(bad.relations.tolist(), (bad.answers - disjoint_task.vocab.answer_offset).tolist()):
        assert a in sets[r]
    assert (bad.answers != clean.answers).all()  # disjoint sets: a new relation means a new answer


def test_query_corruption(shared_task):
    clean = shared_task.sample(B, seed=4)
    bad = shared_task.corrupt(clean, "query", seed=0)
    assert torch.equal(bad.tokens[:, :-1], clean.tokens[:, :-1])  # context (and BOS) unchanged
    assert torch.equal(bad.relations, clean.relations) and torch.equal(bad.subjects, clean.subjects)
    assert (bad.query != clean.query).all()
    assert not (bad.query[:, None] == clean.subjects).any()  # not a context subject
    assert_consistent(shared_task, bad)
    assert (bad.answers != clean.answers).all()  # bijection: another subject, another answer


def test_bad_corruption_kind(shared_task):
    with pytest.raises(ValueError, match="corruption kind"):
        shared_task.corrupt(shared_task.sample(2, seed=0), "answer", seed=0)


def test_relation_corruption_without_second_relation():
    kb = KnowledgeBase.random(6, 1, 6, seed=0)
    task = ICRecallTask(kb, n_pairs=2)
    with pytest.raises(ValueError, match="second relation"):
        task.corrupt(task.sample(2, seed=0), "relation", seed=0)


# --------------------------------------------------------------- vocabulary
def test_vocabulary_layout_and_strings(shared_task):
    v = shared_task.vocab
    assert (v.size, v.subject_offset, v.answer_offset, v.relation_offset) == (37, 1, 17, 33)
    assert v.names[0] == BOS and v.names[1] == "s0" and v.names[17] == "a0" and v.names[33] == "<r0>"
    assert v.answer_tokens().tolist() == list(range(17, 33))
    assert v.to_str(torch.tensor(0)) == BOS
    assert v.to_str(torch.tensor([[1, 17], [33, 36]])) == [["s0", "a0"], ["<r0>", "<r3>"]]
    batch = shared_task.sample(3, seed=0)
    strings = shared_task.to_str(batch.tokens)
    assert [row[-1] for row in strings] == [f"s{int(q)}" for q in batch.query]
    assert [row[2] for row in strings] == [f"a{int(shared_task.kb.table[r, s])}"
                                           for r, s in zip(batch.relations, batch.subjects[:, 0])]


def test_vocabulary_check(shared_task):
    v = shared_task.vocab
    assert v.check(torch.tensor([[0, 36]])) is None
    assert v.check(torch.tensor([], dtype=torch.long)) is None
    with pytest.raises(ValueError, match=r"token id 37, outside the vocabulary \[0, 37\)"):
        v.check(torch.tensor([0, 37]))
    with pytest.raises(ValueError, match=r"token id -1, outside the vocabulary"):
        v.check(torch.tensor([-1, 3]))
    with pytest.raises(ValueError, match="integer token ids"):
        v.check(torch.tensor([0.0, 1.0]))


def test_vocabulary_tags_colliding_names():
    kb = KnowledgeBase.from_triplets([("x", "r", "x"), ("<r>", "r", "y")])
    v = Vocabulary.from_kb(kb)
    assert len(set(v.names)) == v.size == 1 + 2 + 2 + 1
    assert v.names == (BOS, "S:x", "S:<r>", "A:x", "A:y", "R:r")


# ----------------------------------------------------------- factual recall
def test_sample_facts_and_fact_prompts(shared_task):
    s, r, a = shared_task.sample_facts(200, seed=0)
    assert s.shape == r.shape == a.shape == (200,)
    assert torch.equal(a, shared_task.kb.table[r, s] + shared_task.vocab.answer_offset)
    s2, r2, _ = shared_task.sample_facts(200, seed=0)
    assert torch.equal(s, s2) and torch.equal(r, r2)
    assert len(set(zip(s.tolist(), r.tolist()))) > 32  # 200 draws over 64 facts cover most of them
    prompts = shared_task.fact_prompts(s, r)
    assert prompts.shape == (200, 3)
    assert (prompts[:, 0] == 0).all()
    assert torch.equal(prompts[:, 1], s + 1)
    assert torch.equal(prompts[:, 2], r + shared_task.vocab.relation_offset)
    assert shared_task.to_str(prompts[0]) == [BOS, f"s{int(s[0])}", f"<r{int(r[0])}>"]


# ------------------------------------------------------------------ bad sizes (issue 8)
def test_sample_zero_is_an_empty_batch(shared_task):
    batch = shared_task.sample(0, seed=0)
    assert batch.tokens.shape == (0, shared_task.n_ctx) and len(batch) == 0
    assert batch.layout.subject_end.shape == (0, 2) and batch.answers.shape == (0,)
    assert len(shared_task.corrupt(batch, "relation", seed=0)) == 0
    with pytest.raises(ValueError, match="batch_size must be an integer >= 0, got -1"):
        shared_task.sample(-1, seed=0)


@pytest.mark.parametrize("n_pairs", [2.5, True, 0, "2"])
def test_n_pairs_must_be_a_positive_integer(shared_kb, n_pairs):
    with pytest.raises((ValueError, TypeError), match="n_pairs"):
        ICRecallTask(shared_kb, n_pairs=n_pairs)
