"""Constructed associative memories: exact recall from ideal inputs, hook points, construction choice.

The *ideal memory input* for a prompt with relation r, context subjects s_1..s_k
and query s_q is what attention writes at the query when it spreads evenly over
the 2k context tokens (the OV map is scaled so that each gets weight 1)::

    x = token[s_q] + sum_i (context[s_i] + context[a*(s_i, r)])

A test below checks that the built model really produces this input (plus the
query's position embedding) under uniform context attention.
"""

import itertools

import pytest
import torch

import icr_interp
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.model.memory import AssociativeMemory, MemoryScales, construct_memory, pick_construction
from icr_interp.task.prompts import ICRecallTask

GAIN = MemoryScales().logit_gain
# Stage II of a perfectly inferred relation fires 1 (subject) + 1 (relation) - 1.5 = 0.5.
EXACT_LOGIT = GAIN * (2.0 - MemoryScales().lookup_threshold)


def all_contexts(kb: KnowledgeBase, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every (fact, context) pair: query subjects [n], relations [n], context subjects [n k]."""
    queries, relations, contexts = [], [], []
    for s, r, _ in kb.triplets().tolist():
        others = [t for t in range(kb.n_subjects) if t != s and kb.table[r, t] >= 0]
        for ctx in itertools.combinations(others, k):
            queries.append(s), relations.append(r), contexts.append(ctx)
    return torch.tensor(queries), torch.tensor(relations), torch.tensor(contexts)


def ideal_inputs(model, task, query, relation, context) -> torch.Tensor:
    """[n 1 d_model] memory inputs under uniform attention over the context."""
    basis, v = model.basis, task.vocab
    answers = task.kb.table[relation[:, None], context]
    x = (basis.token[v.subject_token(query)]
         + basis.context[v.subject_token(context)].sum(1)
         + basis.context[v.answer_token(answers)].sum(1))
    return x[:, None, :]


@torch.no_grad()
def memory_logits(model, x: torch.Tensor) -> torch.Tensor:
    """Logits the memory alone writes (no residual): [n vocab]."""
    return model.blocks[0].mlp(x)[:, 0] @ model.W_U


def confounded(kb: KnowledgeBase, relation: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Contexts a pair memory cannot read cleanly: a *cross* pair (s_i, a_j), i != j, is itself a
    stored fact, or a context pair (s_i, a_i) is stored under a second relation."""
    table = kb.table  # [relation subject]
    answers = table[relation[:, None], context]  # [n k]
    # stored[n, i, j] = some relation maps s_i to a_j
    stored = (table[None, :, :, None] == answers[:, None, None, :]).gather(
        2, context[:, None, :, None].expand(-1, kb.n_relations, -1, answers.shape[1])).any(1)
    k = context.shape[1]
    cross = (stored & ~torch.eye(k, dtype=torch.bool)).flatten(1).any(1)
    owners = (table[:, None, :].expand(-1, len(relation), -1).gather(2, context[None].expand(kb.n_relations, -1, -1))
              == answers[None]).sum(0)  # relations giving s_i -> a_i
    return cross | (owners > 1).any(1)


# ------------------------------------------------------------- exact recall
@pytest.mark.parametrize("kb_name, memory", [("shared_kb", "pair"), ("disjoint_kb", "answer"), ("disjoint_kb", "pair")])
def test_memory_recalls_every_fact_from_its_ideal_input(kb_name, memory, request):
    kb = request.getfixturevalue(kb_name)
    task = ICRecallTask(kb, n_pairs=2)
    model = icr_interp.build_model(task, memory=memory)
    assert model.icr_config.construction == memory and model.basis.exact
    query, relation, context = all_contexts(kb, 2)
    clean = ~confounded(kb, relation, context)
    logits = memory_logits(model, ideal_inputs(model, task, query, relation, context))
    target = task.vocab.answer_token(kb.table[relation, query])
    hit = logits.argmax(-1) == target
    # Every one of the 64 facts has clean contexts, and is recalled on all of them.
    facts = query * kb.n_relations + relation
    assert len(torch.unique(facts[clean])) == kb.n_triplets == 64
    assert int(hit[clean].sum()) == int(clean.sum())
    if memory == "answer":  # answers alone reveal the relation: no context confounds the control
        assert int(hit.sum()) == len(hit) == 64 * 105
    if kb_name == "shared_kb":
        # A clean context makes stage I output exactly relation[r]: the answer's logit is
        # logit_gain * 0.5 and no other lookup neuron fires.
        rows = torch.arange(len(target))[clean]
        assert torch.allclose(logits[rows, target[clean]], torch.full((len(rows),), EXACT_LOGIT), atol=1e-4)
        others = logits[clean].scatter(1, target[clean][:, None], float("-inf"))
        assert float(others.max()) < 1e-4


def test_lookup_stage_alone_stores_the_whole_table(shared_task):
    """Stage II reads token[s] + relation[r]; with no context stage I stays silent."""
    model = icr_interp.build_model(shared_task)
    basis, v, kb = model.basis, shared_task.vocab, shared_task.kb
    s, r, a = kb.triplets().T
    logits = memory_logits(model, (basis.token[v.subject_token(s)] + basis.relation[r])[:, None])
    assert int((logits.argmax(-1) == v.answer_token(a)).sum()) == 64
    assert torch.allclose(logits[torch.arange(64), v.answer_token(a)], torch.full((64,), EXACT_LOGIT), atol=1e-4)


def test_answer_memory_cannot_read_shared_answers(shared_task):
    """Negative control: with shared answers one answer says nothing about the relation."""
    model = icr_interp.build_model(shared_task, memory="answer")
    query, relation, context = all_contexts(shared_task.kb, 2)
    logits = memory_logits(model, ideal_inputs(model, shared_task, query, relation, context))
    # Every answer votes 1/4 for each relation: stage II sees 1 + 1/4 < 1.5 and stays silent.
    assert float(logits.abs().max()) < 1e-4


@pytest.mark.xfail(strict=True, raises=AssertionError, reason=(
    "memory.py pair construction is not exact on every context: stage I reads the attended context as a bag, "
    "so a cross pair (s_i, a_j), i != j, stored under another relation r' fires too and a pair stored under two "
    "relations splits its vote; with k=2 this ties r' with r (float rounding then picks the argmax) or silences "
    "stage II on ~56 of 6720 contexts of the seed-0 shared KB (~99.2% recall) and ~245 of 6720 (~96.4%) of the "
    "seed-1 one; every failure is a confounded context (test_memory_recalls_every_fact_from_its_ideal_input)"))
@pytest.mark.parametrize("seed", [0, 1])
def test_pair_memory_recalls_on_every_context(seed):
    kb = KnowledgeBase.random(16, 4, 16, answer_overlap=1.0, seed=seed)
    task = ICRecallTask(kb, n_pairs=2)
    model = icr_interp.build_model(task, memory="pair")
    query, relation, context = all_contexts(kb, 2)
    logits = memory_logits(model, ideal_inputs(model, task, query, relation, context))
    target = task.vocab.answer_token(kb.table[relation, query])
    assert int((logits.argmax(-1) == target).sum()) == len(target)


def test_ambiguous_pairs_split_their_vote():
    """Seed 1: some (s, a) pairs are stored under two relations; they are confounded, and the
    memory is still exact on every clean context."""
    kb = KnowledgeBase.random(16, 4, 16, answer_overlap=1.0, seed=1)
    table = kb.table
    n_shared_points = int(sum((table[r] == table[q]).sum() for r in range(4) for q in range(r + 1, 4)))
    assert n_shared_points == 8
    task = ICRecallTask(kb, n_pairs=2)
    model = icr_interp.build_model(task, memory="pair")
    mem = model.blocks[0].mlp
    assert mem.W_rel_in.shape[1] == 64 - 8  # one stage-I neuron per distinct (s, a) pair
    # Rows of W_rel_out for ambiguous pairs have half the norm split over two relation vectors.
    norms = mem.W_rel_out.norm(dim=1)
    full = 1.0 / (2 * (2.0 - MemoryScales().pair_threshold))
    assert torch.allclose(norms.max(), torch.tensor(full), atol=1e-5)
    assert int(torch.isclose(norms, torch.tensor(full / 2 ** 0.5), atol=1e-5).sum()) == 8
    query, relation, context = all_contexts(kb, 2)
    clean = ~confounded(kb, relation, context)
    logits = memory_logits(model, ideal_inputs(model, task, query, relation, context))
    target = task.vocab.answer_token(kb.table[relation, query])
    assert int((logits.argmax(-1) == target)[clean].sum()) == int(clean.sum()) > 0


# -------------------------------------------------- the model feeds the ideal input
def test_uniform_context_attention_gives_the_ideal_input(shared_task):
    model = icr_interp.build_model(shared_task)
    batch = shared_task.sample(16, seed=0)
    n_ctx, q = shared_task.n_ctx, shared_task.n_ctx - 1
    uniform = torch.zeros(n_ctx)
    uniform[batch.layout.subject_end[0]] = uniform[batch.layout.answer_end[0]] = 1 / (2 * shared_task.n_pairs)

    def set_query_row(pattern, hook):
        pattern[:, :, q] = uniform
        return pattern

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", set_query_row)]):
        _, cache = model.run_with_cache(batch.tokens, names_filter="blocks.0.hook_resid_mid")
    x = ideal_inputs(model, shared_task, batch.query, batch.relations, batch.subjects)[:, 0]
    expected = x + model.basis.pos[q]
    assert torch.allclose(cache["blocks.0.hook_resid_mid"][:, q], expected, atol=1e-5)
    assert len(model.blocks[0].attn.hook_pattern.fwd_hooks) == 0  # no hook left behind


# -------------------------------------------------------------------- hooks
def test_memory_hook_points_fire_with_documented_shapes(shared_task):
    model = icr_interp.build_model(shared_task)
    mem = model.blocks[-1].mlp
    batch = shared_task.sample(5, seed=1)
    names = [f"blocks.0.mlp.{h}" for h in ("hook_rel_pre", "hook_rel_post", "hook_relation", "hook_pre", "hook_post")]
    logits, cache = model.run_with_cache(batch.tokens)
    n_rel, n_neurons, d = mem.W_rel_in.shape[1], mem.d_mlp, model.cfg.d_model
    assert (n_rel, n_neurons, d) == (64, 64, 128)  # 64 distinct pairs, 64 facts
    expected = dict(zip(names, [(5, 6, n_rel), (5, 6, n_rel), (5, 6, d), (5, 6, n_neurons), (5, 6, n_neurons)]))
    assert {n: tuple(cache[n].shape) for n in names} == expected
    # The hooks see the real intermediate values.
    torch.testing.assert_close(cache[names[1]], cache[names[0]].relu())
    torch.testing.assert_close(cache[names[4]], cache[names[3]].relu())
    torch.testing.assert_close(cache[names[2]], cache[names[1]] @ mem.W_rel_out)
    resid_mid = cache["blocks.0.hook_resid_mid"]
    torch.testing.assert_close(cache[names[3]], (resid_mid + cache[names[2]]) @ mem.W_in + mem.b_in)
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out"], cache[names[4]] @ mem.W_out + mem.b_out)
    torch.testing.assert_close(logits, (resid_mid + cache["blocks.0.hook_mlp_out"]) @ model.W_U, atol=1e-4, rtol=1e-5)


def test_patching_the_relation_hook_changes_the_answer(shared_task):
    """hook_relation is a real intervention point: writing relation r' there makes the model answer a*(s_q, r')."""
    model = icr_interp.build_model(shared_task)
    batch = shared_task.sample(32, seed=2)
    other = (batch.relations + 1) % 4
    q = shared_task.n_ctx - 1

    def write_relation(rel, hook):
        rel[:, q] = model.basis.relation[other]
        return rel

    logits = model.run_with_hooks(batch.tokens, fwd_hooks=[("blocks.0.mlp.hook_relation", write_relation)])[:, q]
    expected = shared_task.vocab.answer_token(shared_task.kb.table[other, batch.query])
    assert int((logits.argmax(-1) == expected).sum()) == 32


# ------------------------------------------------------------ construction
def test_pick_construction(shared_kb, disjoint_kb):
    assert pick_construction(disjoint_kb) == "answer"
    assert pick_construction(shared_kb) == "pair"
    # Some answers private, some shared: the mixed construction (tests/model/test_memory_reads.py).
    assert pick_construction(KnowledgeBase.random(16, 4, 16, answer_overlap=0.25, seed=0)) == "mixed"
    one_shared = KnowledgeBase.from_triplets([("x", "p", "1"), ("y", "q", "1")])
    assert pick_construction(one_shared) == "pair"
    assert pick_construction(KnowledgeBase.from_triplets([("x", "p", "1"), ("y", "q", "1"), ("y", "p", "2")])) == "mixed"


def test_constructed_memory_weights(disjoint_task):
    model = icr_interp.build_model(disjoint_task)  # "constructed" picks "answer" here
    mem = model.blocks[-1].mlp
    assert isinstance(mem, AssociativeMemory) and mem.construction == "answer"
    assert mem.W_rel_in.shape == (128, 16)  # one stage-I neuron per used answer
    assert torch.allclose(mem.b_rel_in, torch.full((16,), -(MemoryScales().pair_threshold - 1)))
    assert mem.d_mlp == disjoint_task.kb.n_triplets == 64
    assert torch.allclose(mem.b_in, torch.full((64,), -MemoryScales().lookup_threshold))
    with pytest.raises(ValueError, match="construction must be one of"):
        construct_memory("triple", disjoint_task.kb, disjoint_task.vocab, model.basis, 2)


# ------------------------------------- checks moved out of benchmarks/bench_train.py
def _query_step(memory, x, grad_out):
    x = x.detach().requires_grad_(True)
    out = memory(x)
    out.backward(grad_out)
    return out.detach(), x.grad


@pytest.mark.parametrize("impl", ["factored", "sparse"])
def test_memory_implementations_agree_at_the_query(impl):
    """bench_train times dense against factored (and bench_memory sparse) on these inputs: same outputs and
    input gradients, relative to the output scale (at 10^5 facts outputs reach ~1e5 where one fp32 ulp is ~0.008)."""
    task = ICRecallTask(KnowledgeBase.random(96, 8, 96, 1.0, seed=0), n_pairs=4)
    model = icr_interp.build_model(task, d_model=128, memory_impl="dense")  # random basis: crosstalk
    cfg = model.icr_config
    other = construct_memory(cfg.construction, task.kb, task.vocab, model.basis, task.n_pairs,
                             MemoryScales(**cfg.scales), impl=impl)
    batch = task.sample(64, seed=1)
    _, cache = model.run_with_cache(batch.tokens, names_filter="blocks.0.hook_resid_mid")
    x = cache["blocks.0.hook_resid_mid"][torch.arange(64), batch.layout.query_end][:, None]
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    dense = _query_step(model.blocks[0].mlp, x, grad_out)
    mine = _query_step(other, x, grad_out)
    scale = max(1.0, float(dense[0].abs().max()))
    assert scale > 1.0  # the memory fires at the query
    for a, b in zip(dense, mine):
        assert float((a - b).abs().max()) <= 1e-5 * scale


def test_dense_memory_flops_are_eight_matmuls(shared_task):
    """bench_train's FLOP count of the dense step: four forward and four backward batch x d_model x width matmuls."""
    from torch.utils.flop_counter import FlopCounterMode

    model = icr_interp.build_model(shared_task, memory_impl="dense")
    mem = model.blocks[0].mlp.requires_grad_(False)
    x = torch.randn(64, 1, model.cfg.d_model)
    with FlopCounterMode(display=False) as counter:
        _query_step(mem, x, torch.ones_like(x))
    d_model, n_rel = mem.W_rel_in.shape
    assert counter.get_total_flops() == 2 * 4 * 64 * d_model * (n_rel + mem.W_in.shape[1])


@pytest.mark.parametrize("impl", ["dense", "sparse"])
def test_fast_and_full_training_losses_and_gradients_agree(impl):
    """The fine-tuning step bench_train and bench_memory time: query-only path == full forward, grads included."""
    import copy

    import torch.nn.functional as F

    from icr_interp.training.trainer import batch_logits

    task = ICRecallTask(KnowledgeBase.random(64, 8, 64, 1.0, seed=0), n_pairs=4)
    model = icr_interp.build_model(task, memory_impl="dense")
    if impl == "sparse":
        cfg = model.icr_config
        model = copy.deepcopy(model)
        model.blocks[-1].mlp = construct_memory(cfg.construction, task.kb, task.vocab, model.basis, task.n_pairs,
                                                MemoryScales(**cfg.scales), impl="sparse")
        model.setup()
    batch = task.sample(64, seed=1)
    results = []
    for fast in (True, False):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(batch_logits(model, batch, fast=fast), batch.answers)
        loss.backward()
        attn = model.blocks[0].attn
        results.append((loss.detach(), torch.cat([attn.W_Q.grad.flatten(), attn.W_K.grad.flatten()])))
    (loss_fast, grad_fast), (loss_full, grad_full) = results
    assert float(grad_full.abs().max()) > 1e-4
    torch.testing.assert_close(loss_fast, loss_full, rtol=1e-5, atol=1e-5)
    assert float((grad_fast - grad_full).abs().max()) <= 1e-4 * max(1.0, float(grad_full.abs().max()))
