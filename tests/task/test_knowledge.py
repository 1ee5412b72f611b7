"""Knowledge bases: the overlap and mapping knobs, determinism, CSV and dict round trips."""

import json
import math

import pytest
import torch

from icr_interp.task.knowledge import KnowledgeBase


def shared_answers(kb: KnowledgeBase) -> set[int]:
    """Answers used by every relation."""
    return set.intersection(*kb.answer_sets())


def n_owners(kb: KnowledgeBase) -> torch.Tensor:
    """How many relations use each answer."""
    owners = torch.zeros(kb.n_answers, dtype=torch.long)
    for answers in kb.answer_sets():
        owners[list(answers)] += 1
    return owners


# ------------------------------------------------------------------ overlap
def test_overlap_zero_gives_disjoint_answer_sets(disjoint_kb):
    sets = disjoint_kb.answer_sets()
    assert [len(s) for s in sets] == [4, 4, 4, 4]  # 16 answers / 4 relations
    assert all(sets[i].isdisjoint(sets[j]) for i in range(4) for j in range(i + 1, 4))
    assert set.union(*sets) == set(range(16))
    assert n_owners(disjoint_kb).tolist() == [1] * 16
    assert disjoint_kb.answer_reveals_relation is True


def test_overlap_one_shares_one_answer_set(shared_kb):
    sets = shared_kb.answer_sets()
    assert all(s == set(range(16)) for s in sets)
    assert n_owners(shared_kb).tolist() == [4] * 16
    assert shared_kb.answer_reveals_relation is False


@pytest.mark.parametrize("overlap, set_size, n_shared", [(0.25, 4, 1), (0.5, 6, 3), (0.75, 9, 7)])
def test_intermediate_overlap_interpolates(overlap, set_size, n_shared):
    kb = KnowledgeBase.random(16, 4, 16, answer_overlap=overlap, seed=3)
    sets = kb.answer_sets()
    assert [len(s) for s in sets] == [set_size] * 4
    assert len(shared_answers(kb)) == n_shared
    # Fraction shared = overlap up to the rounding of one answer.
    assert abs(n_shared / set_size - overlap) <= 0.5 / set_size + 1e-9
    # Every answer is private to one relation or shared by all: nothing in between.
    owners = n_owners(kb)
    assert set(owners[owners > 0].tolist()) == {1, 4}
    assert int((owners == 4).sum()) == n_shared
    assert int((owners == 1).sum()) == 4 * (set_size - n_shared)
    assert int((owners > 0).sum()) <= 16
    assert kb.answer_reveals_relation is False


def test_shared_set_grows_with_overlap():
    sizes = [len(shared_answers(KnowledgeBase.random(16, 4, 16, answer_overlap=o, seed=0)))
             for o in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert sizes == [0, 1, 3, 7, 16]


def test_int_overlap_accepted():
    """PEP 484: an int is fine where a float is annotated."""
    assert torch.equal(KnowledgeBase.random(8, 2, 8, answer_overlap=0, seed=1).table,
                       KnowledgeBase.random(8, 2, 8, answer_overlap=0.0, seed=1).table)


@pytest.mark.parametrize("n_subjects, n_relations, n_answers, overlap",
                         [(8, 3, 5, 0.25), (8, 4, 4, 0.7), (8, 5, 5, 0.5), (8, 3, 7, 0.3), (16, 6, 20, 0.4)])
def test_answer_sets_fit_in_the_pool(n_subjects, n_relations, n_answers, overlap):
    """Every relation gets the same non-empty set size and all sets fit in n_answers (regression:
    rounding the shared part down used to overflow the pool and leave later relations short)."""
    kb = KnowledgeBase.random(n_subjects, n_relations, n_answers, answer_overlap=overlap, seed=0, mapping="random")
    designed = [len(s) for s in kb.answer_sets()]
    assert min(designed) >= 1
    # With random mapping some answers may go unused; rebuild with balanced mapping and
    # enough subjects to see the designed sets in full.
    kb = KnowledgeBase.random(64, n_relations, n_answers, answer_overlap=overlap, seed=0)
    sizes = [len(s) for s in kb.answer_sets()]
    assert len(set(sizes)) == 1 and sizes[0] >= 1
    assert int((n_owners(kb) > 0).sum()) <= n_answers


@pytest.mark.parametrize("n_relations, n_answers, overlap", [(8, 4, 0.0), (5, 4, 0.25), (3, 2, 0.5)])
def test_too_few_answers_is_a_value_error(n_relations, n_answers, overlap):
    """Not enough answers for one private answer per relation (was a ZeroDivisionError or short sets)."""
    with pytest.raises(ValueError, match="non-empty answer set"):
        KnowledgeBase.random(4, n_relations, n_answers, answer_overlap=overlap)


@pytest.mark.parametrize("kwargs, match", [
    (dict(answer_overlap=1.5), "answer_overlap"),
    (dict(answer_overlap=-0.1), "answer_overlap"),
    (dict(mapping="zipf"), "mapping"),
    (dict(n_subjects=0), ">= 1"),
])
def test_random_rejects_bad_arguments(kwargs, match):
    args = dict(n_subjects=8, n_relations=2, n_answers=8) | kwargs
    with pytest.raises(ValueError, match=match):
        KnowledgeBase.random(**args)


# ------------------------------------------------------------------ mapping
def test_balanced_full_overlap_is_a_bijection_per_relation():
    kb = KnowledgeBase.random(12, 5, 12, answer_overlap=1.0, seed=7, mapping="balanced")
    for row in kb.table:
        assert sorted(row.tolist()) == list(range(12))


def test_balanced_mapping_uses_answers_equally():
    kb = KnowledgeBase.random(10, 3, 4, answer_overlap=1.0, seed=2)  # 10 subjects onto 4 answers
    for row in kb.table:
        counts = torch.bincount(row, minlength=4)
        assert sorted(counts.tolist()) == [2, 2, 3, 3]  # floor/ceil of 10 / 4


def test_random_mapping_is_not_a_bijection():
    kb = KnowledgeBase.random(16, 4, 16, answer_overlap=1.0, seed=0, mapping="random")
    # 16 independent draws from 16 answers: a bijection in all four rows has probability (16!/16^16)^4.
    assert any(len(set(row.tolist())) < 16 for row in kb.table)
    assert kb.table.min() >= 0 and kb.table.max() < 16


# ------------------------------------------------------------ counts, lookup
def test_n_triplets_and_triplets(shared_kb):
    assert shared_kb.n_triplets == 16 * 4
    trip = shared_kb.triplets()
    assert trip.shape == (64, 3)
    assert torch.equal(shared_kb.table[trip[:, 1], trip[:, 0]], trip[:, 2])
    assert len({tuple(t) for t in trip[:, :2].tolist()}) == 64
    s, r, a = trip[5].tolist()
    assert shared_kb.answer(s, r) == a


def test_missing_fact_counts_and_raises():
    kb = KnowledgeBase.from_triplets([("x", "p", "1"), ("y", "p", "2"), ("x", "q", "2")])
    assert kb.n_triplets == 3
    assert kb.table.tolist() == [[0, 1], [1, -1]]
    with pytest.raises(KeyError):
        kb.answer(1, 1)  # (y, q) unknown


def test_constructor_validates():
    with pytest.raises(ValueError, match="shape"):
        KnowledgeBase(("a",), ("r",), ("x",), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        KnowledgeBase(("a",), ("r",), ("x",), torch.tensor([[1]]))
    with pytest.raises(ValueError, match="duplicate subject"):
        KnowledgeBase(("a", "a"), ("r",), ("x",), torch.zeros(1, 2, dtype=torch.long))


# ------------------------------------------------------------- determinism
def test_same_seed_same_table_other_seed_other_table():
    a = KnowledgeBase.random(16, 4, 16, answer_overlap=0.5, seed=11)
    b = KnowledgeBase.random(16, 4, 16, answer_overlap=0.5, seed=11)
    c = KnowledgeBase.random(16, 4, 16, answer_overlap=0.5, seed=12)
    assert torch.equal(a.table, b.table)
    assert not torch.equal(a.table, c.table)
    assert a.spec == b.spec and a.spec["seed"] == 11


def test_random_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    KnowledgeBase.random(16, 4, 16, seed=5)
    assert torch.equal(torch.rand(3), expected)


# --------------------------------------------------------------------- CSV
def write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_from_csv_round_trip(tmp_path, shared_kb):
    lines = ["subject,relation,answer"]
    for s, r, a in shared_kb.triplets().tolist():
        lines.append(f"{shared_kb.subjects[s]},{shared_kb.relations[r]},{shared_kb.answers[a]}")
    kb = KnowledgeBase.from_csv(write_csv(tmp_path / "kb.csv", lines))
    assert kb.n_triplets == shared_kb.n_triplets == 64
    assert set(kb.subjects) == set(shared_kb.subjects) and set(kb.relations) == set(shared_kb.relations)
    # Ids may be renumbered (first-seen order); the facts, by name, must be identical.
    by_name = lambda k: {(k.subjects[s], k.relations[r], k.answers[a]) for s, r, a in k.triplets().tolist()}  # noqa: E731
    assert by_name(kb) == by_name(shared_kb)
    assert kb.spec == dict(kind="facts", source=str(tmp_path / "kb.csv"))


def test_from_csv_real_facts_extra_columns_and_whitespace(tmp_path):
    path = write_csv(tmp_path / "facts.csv", [
        "subject,relation,answer,source",
        "France, capital ,Paris,wiki",
        "Japan,capital,Tokyo,wiki",
        "France,language,French,wiki",
        "France,capital,Paris,dup-but-consistent",
    ])
    kb = KnowledgeBase.from_csv(path)
    assert kb.subjects == ("France", "Japan")
    assert kb.relations == ("capital", "language")
    assert kb.answers == ("Paris", "Tokyo", "French")
    assert kb.table.tolist() == [[0, 1], [2, -1]]
    assert kb.n_triplets == 3
    assert kb.answer_reveals_relation is True


def test_from_csv_two_answers_for_one_fact(tmp_path):
    path = write_csv(tmp_path / "bad.csv", ["subject,relation,answer", "France,capital,Paris", "France,capital,Lyon"])
    with pytest.raises(ValueError, match=r"bad.csv:3: \(France, capital\) has two answers"):
        KnowledgeBase.from_csv(path)


@pytest.mark.parametrize("header", ["subj,rel,ans", "subject,relation", "answer", "a,b,c,d"])
def test_from_csv_bad_header(tmp_path, header):
    path = write_csv(tmp_path / "h.csv", [header, "x,y,z,w"])
    with pytest.raises(ValueError, match="header must name the columns subject,relation,answer"):
        KnowledgeBase.from_csv(path)


@pytest.mark.parametrize("lines, match", [
    (["subject,relation,answer"], "no facts"),
    ([], "header"),
    (["subject,relation,answer", "x,p,"], r"e.csv:2: empty answer name"),
    (["subject,relation,answer", "x,p"], r"e.csv:2: 2 cells, but the header 'subject,relation,answer' has 3"),
])
def test_from_csv_empty_or_incomplete(tmp_path, lines, match):
    path = tmp_path / "e.csv"
    path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match=match):
        KnowledgeBase.from_csv(path)


def test_from_csv_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        KnowledgeBase.from_csv(tmp_path / "nope.csv")


# -------------------------------------------------------------------- dict
@pytest.mark.parametrize("make", [
    lambda: KnowledgeBase.random(9, 3, 7, answer_overlap=0.4, seed=4, mapping="random"),
    lambda: KnowledgeBase.from_triplets([("x", "p", "1"), ("y", "p", "2"), ("x", "q", "2")]),
])
def test_to_dict_from_dict_round_trip_through_json(make):
    kb = make()
    back = KnowledgeBase.from_dict(json.loads(json.dumps(kb.to_dict())))
    assert torch.equal(back.table, kb.table) and back.table.dtype == torch.long
    assert (back.subjects, back.relations, back.answers) == (kb.subjects, kb.relations, kb.answers)
    assert back.spec == kb.spec
    assert back.n_triplets == kb.n_triplets


def test_spec_regenerates_the_table():
    kb = KnowledgeBase.random(10, 3, 10, answer_overlap=0.5, seed=9)
    spec = {k: v for k, v in kb.spec.items() if k != "kind"}
    assert torch.equal(KnowledgeBase.random(**spec).table, kb.table)
    assert math.isclose(spec["answer_overlap"], 0.5)


# ------------------------------------------------------------------ what spreadsheets write (issue 8)
def test_from_csv_accepts_bom_spaces_and_capitals(tmp_path):
    path = tmp_path / "sheet.csv"
    path.write_bytes("\ufeff Subject , RELATION,Answer \r\nFrance,capital,Paris\r\n\r\nJapan,capital,Tokyo\r\n"
                     .encode("utf-8"))
    kb = KnowledgeBase.from_csv(path)
    assert kb.subjects == ("France", "Japan") and kb.relations == ("capital",) and kb.n_triplets == 2


@pytest.mark.parametrize("data, message", [
    (b"subject,relation,answer\nx,p,y\nb,q\xff,c\n", "bad.csv:3: byte 0xff at column 4 is not UTF-8"),
    (b'subject,relation,answer\nx,"p\nq",y\nb,r,c\n', "bad.csv:2: a quoted field spans lines 2-3"),
    (b'subject,relation,answer\nx,p,y\nx,"p,y\nz,p,z\n', "bad.csv:3: unexpected end of data"),
    (b"subject,relation,answer\nx,p,y,extra\n", "bad.csv:2: 4 cells, but the header 'subject,relation,answer' has 3"),
    (b"subj, rel ,answer\nx,p,y\n", "bad.csv:1: header must name the columns subject,relation,answer; "
                                     "read 'subj,rel,answer'"),
    (b"subject,Subject,relation,answer\nx,y,p,z\n", "bad.csv:1: header names the column 'subject' twice"),
    (b"subject,relation,answer\n\nx,p,y\nx,p,z\n", r"bad.csv:4: (x, p) has two answers"),
])
def test_from_csv_errors_name_file_and_line(tmp_path, data, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        KnowledgeBase.from_csv(path)
    assert str(info.value).startswith(str(tmp_path)) and message in str(info.value)
    assert "\n" not in str(info.value)
