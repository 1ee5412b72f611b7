"""The mixed construction: exact recall on mixed knowledge bases, one function in three implementations,
and fine-tuning that no longer collapses to the BOS sink.

A *mixed* base has answers that reveal their relation (private: one relation
uses them) next to answers that do not (shared), gaps, and (subject, answer)
pairs stored under two relations.  The mixed memory gives private answers an
answer neuron, shared ones pair neurons, and normalises the relation vector
by its vote mass (docs/theory.md §2b).
"""

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

import icr_interp
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.model.memory import MemoryScales, construct_memory, pick_construction
from icr_interp.task.prompts import ICRecallTask

SCALES = MemoryScales()
# A context whose every pair votes for r alone: rho = relation[r] (mass capped at 1), and the
# (s_q, r) lookup neuron fires 1 + 1 - mixed_lookup_threshold.
EXACT_LOGIT = SCALES.mixed_logit_gain * (2.0 - SCALES.mixed_lookup_threshold)

# A small real-fact base: two city relations that share an answer when the capital is the
# largest city, a continent and a currency relation with private answers, and gaps.
FACTS = """France Paris Paris Europe Euro|Germany Berlin Berlin Europe Euro|Italy Rome Rome Europe Euro
Spain Madrid Madrid Europe Euro|Belgium Brussels Antwerp Europe Euro|Switzerland Bern Zurich Europe Franc
Poland Warsaw Warsaw Europe -|Turkey Ankara Istanbul Asia Lira|China Beijing Shanghai Asia Yuan
Japan Tokyo Tokyo Asia Yen|India Delhi Mumbai Asia Rupee|Vietnam Hanoi Saigon - Dong
Canada Ottawa Toronto America Dollar|USA Washington NewYork America Dollar|Mexico MexicoCity MexicoCity America Peso
Brazil Brasilia SaoPaulo America Real|Peru Lima Lima America Sol|Egypt Cairo Cairo Africa Pound
Nigeria Abuja Lagos Africa Naira|Kenya Nairobi Nairobi Africa Shilling|Australia Canberra Sydney Oceania Dollar
Chile Santiago - America Peso"""
RELATIONS = ("capital", "largest_city", "continent", "currency")


def country_kb() -> KnowledgeBase:
    facts = []
    for row in FACTS.replace("\n", "|").split("|"):
        country, *answers = row.split()
        facts += [(country, r, a) for r, a in zip(RELATIONS, answers) if a != "-"]
    return KnowledgeBase.from_triplets(facts)


def all_contexts(kb: KnowledgeBase, k: int):
    """Every (fact, context) combination: query subjects [n], relations [n], context subjects [n k]."""
    rows = []
    for s, r, _ in kb.triplets().tolist():
        others = [t for t in range(kb.n_subjects) if t != s and kb.table[r, t] >= 0]
        rows += [(s, r, ctx) for ctx in itertools.combinations(others, k)]
    query, relation, context = zip(*rows)
    return torch.tensor(query), torch.tensor(relation), torch.tensor(context)


def ideal_input(model, task, query, relation, context):
    """What uniform attention over the 2k context tokens writes at the query (tests/model/test_memory.py)."""
    basis, v = model.basis, task.vocab
    answers = task.kb.table[relation[:, None], context]
    return (basis.token[v.subject_token(query)] + basis.context[v.subject_token(context)].sum(1)
            + basis.context[v.answer_token(answers)].sum(1))[:, None]


def posterior_mass(task, query, relation, context) -> torch.Tensor:
    """[n vocab] Bayes posterior mass of each answer given the shown pairs and the query (icr_interp.task.ceiling)."""
    table, k = task.kb.table, context.shape[1]
    shown = table[relation[:, None], context]
    consistent = (table[:, context] == shown[None]).all(-1) & (table[:, query] >= 0)  # [relation n]
    n_facts = (table >= 0).sum(1).double()
    falling = torch.stack([n_facts - j for j in range(k + 1)]).clamp_min(1).prod(0)
    weight = consistent.double() / falling[:, None]
    answers = task.vocab.answer_token(table[:, query].clamp_min(0))  # [relation n]
    mass = torch.zeros(len(query), task.vocab.size, dtype=torch.double).scatter_add_(1, answers.T, weight.T)
    return mass / mass.sum(1, keepdim=True)


def cross_pairs(kb: KnowledgeBase, relation, context) -> torch.Tensor:
    """[n] whether a cross pair (s_i, a_j), i != j, is itself stored: stage I reads a bag of tokens."""
    shown = kb.table[relation[:, None], context]  # [n k]
    stored = (kb.table[:, context][..., None] == shown[None, :, None, :]).any(0)  # [n i j]
    return (stored & ~torch.eye(context.shape[1], dtype=torch.bool)).flatten(1).any(1)


@pytest.fixture(scope="module")
def countries():
    kb = country_kb()
    assert pick_construction(kb) == "mixed" and int((kb.table < 0).sum()) == 3  # gaps
    return kb


# ------------------------------------------------------------- exact recall
def memory_logits(model, task, query, relation, context) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits the memory alone writes [n vocab] and its relation coefficients [n relation], ideal input."""
    x = ideal_input(model, task, query, relation, context)
    mem = model.blocks[0].mlp
    with torch.no_grad():
        return mem(x)[:, 0] @ model.W_U, mem.infer_relation(x)[:, 0] @ model.basis.relation.T


def test_mixed_memory_is_bayes_optimal_on_every_context_of_the_country_base(countries):
    """Ambiguous pairs (capital = largest city) split their vote by likelihood, so even contexts that do
    not pin the answer down get the answer of largest posterior mass; every fact is recalled exactly."""
    task = ICRecallTask(countries, n_pairs=2)
    model = icr_interp.build_model(task)
    assert model.icr_config.construction == "mixed" and model.basis.exact
    query, relation, context = all_contexts(countries, 2)
    logits, rho = memory_logits(model, task, query, relation, context)
    mass = posterior_mass(task, query, relation, context)
    picked = mass.gather(1, logits.argmax(-1)[:, None])[:, 0]
    assert bool((picked >= mass.max(1).values - 1e-9).all())  # 16,590 contexts, none suboptimal
    sure = mass.max(1).values == 1
    facts = query * countries.n_relations + relation
    assert len(torch.unique(facts[sure])) == countries.n_triplets  # every fact has a context pinning it down
    # A context whose pairs all vote for r alone: the exact lookup logit, and nothing else fires.
    pure = torch.isclose(rho.max(-1).values, torch.tensor(1.0), atol=1e-5) & (rho > 1e-6).sum(-1).eq(1)
    assert int(pure.sum()) > len(pure) // 4
    assert torch.allclose(logits[pure].max(-1).values, torch.full((int(pure.sum()),), EXACT_LOGIT), atol=1e-4)
    assert int((logits[pure] > 1e-4).sum()) == int(pure.sum())


@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_mixed_memory_recalls_every_fact_of_a_partial_overlap_base(overlap):
    """Contexts that pin the answer down and hold no stored cross pair (theory section 8) are all recalled."""
    kb = KnowledgeBase.random(16, 4, 16, answer_overlap=overlap, seed=0)
    task = ICRecallTask(kb, n_pairs=2)
    model = icr_interp.build_model(task)
    assert model.icr_config.construction == "mixed"
    query, relation, context = all_contexts(kb, 2)
    logits, _ = memory_logits(model, task, query, relation, context)
    clean = (posterior_mass(task, query, relation, context).max(1).values == 1) & ~cross_pairs(kb, relation, context)
    facts = query * kb.n_relations + relation
    assert len(torch.unique(facts[clean])) == kb.n_triplets
    target = task.vocab.answer_token(kb.table[relation, query])
    assert bool((logits.argmax(-1) == target)[clean].all())


def test_relation_vector_is_normalised_by_its_vote_mass(countries):
    """The answer-tilted start overdrives the pair memory's relation vector (many neurons fire, designed 1);
    in the mixed one the strongest relation reads min(1, vote mass), so no coefficient exceeds 1."""
    task = ICRecallTask(countries, n_pairs=3)
    batch = task.sample(64, seed=0)
    top = {}
    for memory in ("pair", "mixed"):
        model = icr_interp.build_model(task, memory=memory)
        _, cache = model.run_with_cache(batch.tokens, names_filter="blocks.0.mlp.hook_relation")
        rho = cache["blocks.0.mlp.hook_relation"][:, -1] @ model.basis.relation.T  # [batch relation]
        top[memory] = rho.max(-1)
    assert float(top["pair"].values.max()) > 3.0  # the collapse's cause
    assert float(top["mixed"].values.max()) <= 1 + 1e-5 and float(top["mixed"].values.min()) > 0.9
    table = countries.table
    shown = table[batch.relations[:, None], batch.subjects]
    sure = (table[:, batch.subjects] == shown[None]).all(-1).sum(0) == 1  # one relation fits the context
    assert int(sure.sum()) > 48 and bool((top["mixed"].indices == batch.relations)[sure].all())


# ------------------------------------------------ dense == factored == sparse
@pytest.mark.parametrize("d_model", [None, 96])
def test_mixed_implementations_agree(countries, d_model):
    task = ICRecallTask(countries, n_pairs=3)
    # The subject start: the answer start is a flat optimum of the mixed memory (no gradient to compare).
    model = icr_interp.build_model(task, d_model=d_model, memory_impl="dense", start="subject")
    cfg = model.icr_config
    batch = task.sample(32, seed=1)
    results = {}
    for impl in ("dense", "factored", "sparse"):
        other = copy.deepcopy(model)
        if impl != "dense":
            other.blocks[-1].mlp = construct_memory(cfg.construction, task.kb, task.vocab, model.basis, task.n_pairs,
                                                    MemoryScales(**cfg.scales), impl=impl)
            other.setup()
        logits = other(batch.tokens)[:, -1]
        F.cross_entropy(logits, batch.answers).backward()
        attn = other.blocks[0].attn
        results[impl] = (logits.detach(), torch.cat([attn.W_Q.grad.flatten(), attn.W_K.grad.flatten()]))
    dense_logits, dense_grad = results["dense"]
    assert float(dense_grad.abs().max()) > 1e-4
    for impl in ("factored", "sparse"):
        logits, grad = results[impl]
        assert float((logits - dense_logits).abs().max()) <= 1e-5 * max(1.0, float(dense_logits.abs().max()))
        assert float((grad - dense_grad).abs().max()) <= 1e-5 * max(1.0, float(dense_grad.abs().max()))


# ------------------------------------------------------------ fine-tuning
def test_finetuning_a_mixed_base_does_not_collapse(countries):
    """The pair memory's start overdrives stage II and fine-tuning flees to the BOS sink; the mixed one holds."""
    task = ICRecallTask(countries, n_pairs=3)
    out = {}
    for memory in ("pair", "mixed"):
        model = icr_interp.build_model(task, memory=memory)
        start = icr_interp.evaluate(model, task, n_prompts=256)["accuracy"]
        icr_interp.finetune(model, task, n_samples=256, steps=40, progress=False)
        after = icr_interp.evaluate(model, task, n_prompts=256)
        out[memory] = start, after["accuracy"], after["query_attention"][0], after["ceiling"]
    (pair_start, pair_end, _, _), (start, end, bos, best) = out["pair"], out["mixed"]
    assert pair_end < 0.2 < pair_start  # the collapse this construction fixes (0.04 from 0.6 here)
    assert end >= start - 1e-9 and end >= best - 0.02 and bos < 0.05
