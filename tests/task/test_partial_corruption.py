"""Corruptions on partial knowledge bases: prompts without a relation (or query) swap are dropped and counted."""

import json
import warnings
from pathlib import Path

import pytest
import torch

from icr_interp import ICRecallTask, KnowledgeBase, build_model, save_checkpoint

from icr_interp.experiments import checkpoint_analysis as probing
from icr_interp.analysis.causal.circuit import circuit_summary

REPO = Path(__file__).resolve().parents[2]
N_PAIRS = 2
KNOWS = {"r0": range(10), "r1": range(0, 6), "r2": range(4, 10)}  # relation -> the subjects it knows


def partial_kb(knows: dict[str, range], n_answers: int = 10) -> KnowledgeBase:
    """Relation ``r{j}`` maps subject ``s{i}`` to ``a{(i + 3 j) mod n_answers}`` for the subjects it knows."""
    facts = [(f"s{i}", rel, f"a{(i + 3 * j) % n_answers}") for j, (rel, subjects) in enumerate(knows.items())
             for i in subjects]
    return KnowledgeBase.from_triplets(facts)


def known_sets(kb: KnowledgeBase) -> list[set[int]]:
    return [set(torch.nonzero(row >= 0).flatten().tolist()) for row in kb.table]


def has_relation_swap(kb: KnowledgeBase, batch) -> list[bool]:
    """By set arithmetic: some other relation knows every subject of the prompt (query included)."""
    sets, used = known_sets(kb), torch.cat([batch.subjects, batch.query[:, None]], 1).tolist()
    return [any(set(u) <= sets[r] for r in range(kb.n_relations) if r != rel)
            for u, rel in zip(used, batch.relations.tolist())]


@pytest.fixture(scope="module")
def partial():
    """r0 knows s0..s9, r1 s0..s5, r2 s4..s9: an r0 prompt spanning both halves has no relation swap."""
    task = ICRecallTask(partial_kb(KNOWS), n_pairs=N_PAIRS)
    return task, task.sample(200, seed=0)


# ------------------------------------------------------------------ task level
def test_relation_swap_drops_exactly_the_prompts_without_one(partial):
    task, batch = partial
    expected = torch.tensor(has_relation_swap(task.kb, batch))
    n_expected = int((~expected).sum())
    assert 0 < n_expected < len(batch) and (batch.relations[~expected] == 0).all()  # only r0 prompts lack one
    assert torch.equal(task.corruptible(batch, "relation"), expected)
    with pytest.warns(UserWarning, match=f"^{n_expected} of 200 prompts have no relation corruption"):
        clean, corrupted, n_dropped = task.corrupt_pairs(batch, "relation", seed=3)
    assert n_dropped == n_expected and len(clean) == len(corrupted) == 200 - n_expected
    for name in ("tokens", "answers", "relations", "subjects", "query"):
        assert torch.equal(getattr(clean, name), getattr(batch[expected], name))
    assert torch.equal(corrupted.tokens, task.corrupt(batch[expected], "relation", seed=3).tokens)
    assert torch.equal(corrupted.subjects, clean.subjects) and torch.equal(corrupted.query, clean.query)
    assert (corrupted.relations != clean.relations).all()
    sets = known_sets(task.kb)
    used = torch.cat([corrupted.subjects, corrupted.query[:, None]], 1).tolist()
    assert all(set(u) <= sets[r] for u, r in zip(used, corrupted.relations.tolist()))
    with pytest.raises(ValueError, match=f"second relation that knows the prompt's subjects and changes its answers; {n_expected} of 200"):
        task.corrupt(batch, "relation", seed=3)  # the strict form still refuses


def test_a_batch_that_needs_no_drop_is_corrupt_itself(partial):
    task, batch = partial
    full = batch[task.corruptible(batch, "relation")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no drop, no warning
        clean, corrupted, n_dropped = task.corrupt_pairs(full, "relation", seed=5)
        q_clean, q_corrupted, q_dropped = task.corrupt_pairs(batch, "query", seed=5)
    assert n_dropped == 0 and torch.equal(clean.tokens, full.tokens)
    assert torch.equal(corrupted.tokens, task.corrupt(full, "relation", seed=5).tokens)
    assert q_dropped == 0 and torch.equal(q_corrupted.tokens, task.corrupt(batch, "query", seed=5).tokens)
    with pytest.raises(ValueError, match="seed or a torch.Generator"):
        task.corrupt_pairs(batch, "relation")  # sampling is explicit, checked before anything is dropped


def test_query_swap_needs_no_second_relation():
    """Two relations that share no subject: no relation swap anywhere, the query swap works on every prompt."""
    task = ICRecallTask(partial_kb({"r0": range(0, 6), "r1": range(6, 12)}, n_answers=12), n_pairs=N_PAIRS)
    batch = task.sample(64, seed=1)
    assert not task.corruptible(batch, "relation").any() and task.corruptible(batch, "query").all()
    clean, corrupted, n_dropped = task.corrupt_pairs(batch, "query", seed=2)
    assert n_dropped == 0 and torch.equal(clean.tokens, batch.tokens)
    assert torch.equal(corrupted.tokens[:, :-1], batch.tokens[:, :-1]) and (corrupted.query != batch.query).all()
    with pytest.raises(ValueError, match="^no prompt of 64 has a relation corruption: no second relation knows"):
        task.corrupt_pairs(batch, "relation", seed=2)


def test_query_swap_drops_prompts_of_a_relation_without_a_spare_subject():
    """r1 knows exactly k + 1 = 3 subjects: its prompts use them all and have no other query."""
    task = ICRecallTask(partial_kb({"r0": range(8), "r1": range(3)}, n_answers=8), n_pairs=N_PAIRS)
    batch = task.sample(100, seed=4)
    n_r1 = int((batch.relations == 1).sum())
    assert 0 < n_r1 < 100
    with pytest.warns(UserWarning, match=f"^{n_r1} of 100 prompts have no query corruption"):
        clean, corrupted, n_dropped = task.corrupt_pairs(batch, "query", seed=0)
    assert n_dropped == n_r1 and (clean.relations == 0).all() and len(corrupted) == 100 - n_r1


def test_circuit_summary_patches_each_job_on_its_own_prompts(partial):
    task, batch = partial
    model = build_model(task)
    n_expected = 40 - sum(has_relation_swap(task.kb, batch[:40]))
    with pytest.warns(UserWarning, match=f"^{n_expected} of 40 prompts have no relation corruption"):
        s = circuit_summary(model, task, batch[:40], seed=1)
    relation = s.baselines["relation"]
    assert relation["n_dropped"] == n_expected and relation["n_prompts"] == 40 - n_expected
    assert s.baselines["lookup"]["n_dropped"] == 0 and s.n_prompts == 40
    lookup_only = circuit_summary(model, task, batch[:40], seed=1, jobs=("lookup",))
    assert lookup_only.jobs == ("lookup",) and set(lookup_only.baselines) == {"lookup"}
    assert all(r.relation != r.relation for r in lookup_only.rows)  # nan: not measured
    assert [r.lookup for r in lookup_only.rows] == pytest.approx([r.lookup for r in s.rows])
    assert "relation inference not measured (no relation swap)" in lookup_only.verdict
    with pytest.raises(ValueError, match="jobs must be a non-empty subset"):
        circuit_summary(model, task, batch[:4], jobs=("answers",))


# ------------------------------------------------------------------ probes/patching.py
def run_patching(*args, capsys) -> tuple[int, str, str]:
    """``probes/patching.py``'s main in this process: exit code, stdout, stderr."""
    from _scripts import load  # its own folder's _common, whichever a test imported before

    module = load("probes", "patching.py")
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = module.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def partial_checkpoint(partial, tmp_path_factory) -> Path:
    task, _ = partial
    path = tmp_path_factory.mktemp("partial") / "ckpt"
    save_checkpoint(path, build_model(task), task, step=0)
    return path


@pytest.mark.parametrize("corruption", ["relation", "query", "both"])
def test_patching_probe_on_a_partial_base(partial, partial_checkpoint, corruption, tmp_path, capsys):
    task, _ = partial
    out = tmp_path / "out"
    code, stdout, stderr = run_patching(partial_checkpoint, "--corruption", corruption, "--n-prompts", 32,
                                        "--seed", 3, "--eval-prompts", 32, "--out", out, capsys=capsys)
    assert code == 0, stderr
    batch, _ = probing.probe_prompts(task, 32, 3)
    n_no_swap = 32 - sum(has_relation_swap(task.kb, batch))
    assert n_no_swap > 0  # the seed gives a prompt to drop
    results = json.loads((out / "patching.json").read_text())["results"]
    circuit = json.loads((out / "circuit.json").read_text())
    expected = {"relation": n_no_swap, "query": 0}
    kinds = probing.KINDS[corruption]
    assert list(results) == list(kinds)
    for kind in kinds:
        assert results[kind]["n_dropped"] == expected[kind] and results[kind]["n_prompts"] == 32 - expected[kind]
        job = {"relation": "relation", "query": "lookup"}[kind]
        assert circuit["baselines"][job]["n_dropped"] == expected[kind]
        assert f"== {kind} swap ({32 - expected[kind]} prompts, {expected[kind]} without one dropped) ==" in stdout
    assert circuit["jobs"] == [{"relation": "relation", "query": "lookup"}[k] for k in kinds]


def test_patching_probe_query_swap_without_any_relation_swap(tmp_path, capsys):
    """On a base where no prompt has a relation swap, --corruption query runs and relation fails in one line."""
    task = ICRecallTask(partial_kb({"r0": range(0, 6), "r1": range(6, 12)}, n_answers=12), n_pairs=N_PAIRS)
    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, build_model(task), task, step=0)
    code, stdout, stderr = run_patching(ckpt, "--corruption", "query", "--n-prompts", 16, "--eval-prompts", 16,
                                        "--out", tmp_path / "q", capsys=capsys)
    assert code == 0, stderr
    results = json.loads((tmp_path / "q" / "patching.json").read_text())["results"]
    assert list(results) == ["query"] and results["query"]["n_dropped"] == 0 and results["query"]["n_prompts"] == 16
    circuit = json.loads((tmp_path / "q" / "circuit.json").read_text())
    assert circuit["jobs"] == ["lookup"] and all(r["relation"] is None for r in circuit["rows"])
    code, _, stderr = run_patching(ckpt, "--corruption", "relation", "--n-prompts", 16, "--out", tmp_path / "r",
                                   capsys=capsys)
    assert code == 1 and stderr == ("patching.py: error: no prompt of 16 has a relation corruption: no second "
                                    "relation knows all the subjects of any prompt and changes its answers\n")


def test_swaps_never_leave_the_prompt_or_the_target_unchanged():
    """On the country base capital and largest city agree for 108 countries and continents are shared by many:
    a relation swap must change some context answer and the target, a query swap the target."""
    task = ICRecallTask(KnowledgeBase.builtin("countries"), n_pairs=3)
    batch = task.sample(512, seed=0)
    table = task.kb.table
    for kind in ("relation", "query"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clean, corrupted, n_dropped = task.corrupt_pairs(batch, kind, seed=1)
        assert len(clean) + n_dropped == 512 and len(clean) > 400
        assert (clean.answers != corrupted.answers).all()  # the target moves
        assert (clean.tokens != corrupted.tokens).any(1).all()  # the prompt moves
    # Without the rule: the same-relation-answer swaps the old draw allowed on these prompts.
    shown = table[batch.relations[:, None], batch.subjects]
    same = ((table[:, batch.subjects] == shown[None]).all(-1) & (table[:, batch.subjects] >= 0).all(-1)).T
    same[torch.arange(512), batch.relations] = False
    assert int(same.any(1).sum()) > 20  # e.g. capital <-> largest city over cities that are both
