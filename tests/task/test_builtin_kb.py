"""The built-in knowledge base of real facts: shipped with the package, offline, its shape and a few facts."""

import socket
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from icr_interp import ICRecallTask, KnowledgeBase, build_model

REPO = Path(__file__).resolve().parents[2]
RELATIONS = ("capital", "largest_city", "continent", "currency", "official_language", "calling_code")


@pytest.fixture(scope="module")
def countries(monkeypatch_module) -> KnowledgeBase:
    return KnowledgeBase.builtin("countries")


@pytest.fixture(scope="module")
def monkeypatch_module():
    """No network while the base loads: a socket that refuses to connect."""
    mp = pytest.MonkeyPatch()

    def refuse(*args, **kwargs):
        raise OSError("network access in a test of the built-in knowledge base")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    yield mp
    mp.undo()


def fact(kb: KnowledgeBase, subject: str, relation: str) -> str:
    return kb.answers[kb.answer(kb.subjects.index(subject), kb.relations.index(relation))]


def test_names_are_stable_and_unknown_names_list_them():
    assert KnowledgeBase.builtin_names() == ("countries",)
    with pytest.raises(ValueError, match="^no built-in knowledge base 'planets'; choose one of countries$"):
        KnowledgeBase.builtin("planets")


def test_size_and_shape(countries):
    kb = countries
    assert kb.relations == RELATIONS
    assert kb.n_triplets >= 500 and kb.n_relations >= 5 and kb.n_subjects >= 100
    assert (kb.n_subjects, kb.n_triplets) == (148, 797)  # pinned: a change to the data shows up here
    assert kb.spec == {"kind": "builtin", "name": "countries"}
    assert KnowledgeBase.from_dict(kb.to_dict()).to_dict() == kb.to_dict()


def test_some_relations_share_answers_others_are_disjoint(countries):
    kb, sets = countries, countries.answer_sets()
    r = {name: i for i, name in enumerate(kb.relations)}
    shared = sets[r["capital"]] & sets[r["largest_city"]]
    assert len(shared) >= 50 and {"Paris", "Tokyo", "Cairo"} <= {kb.answers[a] for a in shared}
    for name in ("continent", "currency", "official_language", "calling_code"):
        others = set().union(*(s for i, s in enumerate(sets) if i != r[name]))
        assert not sets[r[name]] & others, name
    assert not kb.answer_reveals_relation  # the shared pair makes an answer ambiguous
    assert len(sets[r["continent"]]) == 6


def test_gaps_are_missing_facts_not_guesses(countries):
    kb, known = countries, countries.table >= 0
    assert int((~known).sum()) == kb.n_relations * kb.n_subjects - kb.n_triplets > 50
    assert known[kb.relations.index("calling_code")].all()  # every country has one
    for subject, relation in (("South Africa", "capital"), ("Bolivia", "capital"), ("China", "largest_city"),
                              ("Russia", "continent"), ("Switzerland", "official_language")):
        with pytest.raises(KeyError, match="no fact"):
            kb.answer(kb.subjects.index(subject), kb.relations.index(relation))


@pytest.mark.parametrize("subject, relation, answer", [
    ("France", "capital", "Paris"), ("France", "largest_city", "Paris"), ("Japan", "capital", "Tokyo"),
    ("Australia", "capital", "Canberra"), ("Canada", "largest_city", "Toronto"), ("Brazil", "capital", "Brasília"),
    ("Brazil", "largest_city", "São Paulo"), ("Kenya", "continent", "Africa"), ("Peru", "continent", "South America"),
    ("Germany", "currency", "euro"), ("Japan", "currency", "Japanese yen"), ("Egypt", "official_language", "Arabic"),
    ("United States", "capital", "Washington, D.C."), ("United States", "calling_code", "+1"),
    ("Kazakhstan", "calling_code", "+7"), ("India", "calling_code", "+91"),
])
def test_spot_checks(countries, subject, relation, answer):
    assert fact(countries, subject, relation) == answer


def test_a_task_and_a_model_are_made_from_it(countries):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every relation knows enough subjects: no sparse-relation warning
        task = ICRecallTask(countries, n_pairs=4)
    assert torch.allclose(task.relation_weights, torch.full((6,), 1 / 6))
    batch = task.sample(32, seed=0)
    assert task.corruptible(batch, "relation").sum() > 0 and task.corruptible(batch, "query").all()
    model = build_model(task)
    assert model.cfg.d_vocab == task.vocab.size == 1 + 148 + countries.n_answers + 6
    with torch.no_grad():
        logits = model(batch.tokens)
    assert logits.shape == (32, task.n_ctx, task.vocab.size)


def test_the_csv_is_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "task/data/*.csv" in config["tool"]["setuptools"]["package-data"]["icr_interp"]
    assert (REPO / "icr_interp" / "task" / "data" / "countries.csv").is_file()


def test_run_config_selects_a_builtin_base_and_keeps_old_keys():
    from icr_interp import RunConfig

    cfg = RunConfig().with_overrides(**{"knowledge.builtin": "countries"})
    kb = cfg.knowledge.build(seed=0)
    assert (kb.n_subjects, kb.n_relations, kb.n_triplets) == (148, 6, 797) and kb.spec["name"] == "countries"
    assert RunConfig.from_dict(cfg.to_dict()) == cfg and cfg.key != RunConfig().key
    assert RunConfig().key == "c7a62df1dcc776f9"  # unset (None) it stays out of the key: cached sweeps still match
    for bad, msg in (({"knowledge.builtin": "atlas"}, "must be one of countries, got 'atlas'"),
                     ({"knowledge.builtin": "countries", "knowledge.csv": "f.csv"}, "both set")):
        with pytest.raises(ValueError, match=msg):
            RunConfig().with_overrides(**bad)
