"""The draws both prompt tasks share (icr_interp.task.sampling): explicit generators, uniform choices, one
definition of each."""

import ast
from pathlib import Path

import pytest
import torch

import icr_interp.task
from icr_interp.task import sampling as S
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask

TASK_DIR = Path(icr_interp.task.__file__).parent


def test_generator_is_explicit():
    gen = torch.Generator().manual_seed(5)
    assert S.generator(None, gen) is gen and S.generator(3, gen) is gen  # the generator wins
    seeded = torch.Generator().manual_seed(7)
    assert torch.equal(torch.rand(4, generator=S.generator(7)), torch.rand(4, generator=seeded))
    with pytest.raises(ValueError, match="pass a seed or a torch.Generator"):
        S.generator(None)


@pytest.mark.parametrize("bad", [-1, True, 2.0, "3", None])
def test_check_count_refuses_what_is_not_a_count(bad):
    with pytest.raises(ValueError, match="batch_size must be an integer >= 0"):
        S.check_count(bad)
    assert S.check_count(0) == 0 and S.check_count(5) == 5


def test_draw_is_uniform_over_the_options():
    options = torch.tensor([False, True, False, True, True, False])
    gen = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.stack([S.draw(options, gen) for _ in range(3000)]), minlength=6)
    assert counts[~options].sum() == 0  # never a forbidden option
    # each allowed option 1000 +- 5 sigma (sigma = sqrt(3000 / 3 * 2 / 3) = 25.8): uniform, or this fails
    assert (counts[options] - 1000).abs().max() < 130, counts.tolist()


def test_distinct_subjects_are_known_distinct_and_uniform():
    table = torch.full((2, 8), -1)
    table[0, [1, 2, 4, 6]] = 0  # relation 0 knows subjects 1, 2, 4, 6
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([S.distinct_subjects(table, 0, 3, gen) for _ in range(2000)])
    assert all(len(set(d.tolist())) == 3 and set(d.tolist()) <= {1, 2, 4, 6} for d in draws)
    last = torch.bincount(draws[:, -1], minlength=8)[[1, 2, 4, 6]]  # the query: each subject 1/4 of the time
    assert (last - 500).abs().max() < 5 * (2000 * 0.25 * 0.75) ** 0.5, last.tolist()


def test_relation_weights_are_uniform_over_the_usable_relations():
    kb = KnowledgeBase.random(8, 3, 8, answer_overlap=1.0, seed=0)
    table = kb.table.clone()
    table[2, 2:] = -1  # relation 2 knows 2 subjects: too few for k = 2
    usable = S.usable_relations(table, 3)
    assert usable.tolist() == [0, 1]
    assert S.relation_weights(3, usable).tolist() == [0.5, 0.5, 0.0]
    from dataclasses import replace

    with pytest.warns(UserWarning, match="never sampled"):
        task = ICRecallTask(replace(kb, table=table), n_pairs=2)
    assert torch.equal(task.relation_weights, S.relation_weights(3, usable))
    assert set(task.sample(64, seed=0).relations.tolist()) == {0, 1}


def test_each_helper_is_defined_once():
    """text.py once imported prompts.py's private helpers and kept its own copy of ``_draw``: one definition now."""
    names = {"draw", "_draw", "_pick", "generator", "_generator", "check_count", "_check_count", "distinct_subjects",
             "_distinct_subjects", "relation_weights", "usable_relations"}
    found = {}
    for path in sorted(TASK_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name in names and not _is_property(node):
                found.setdefault(node.name, []).append(path.name)
    assert found == {name: ["sampling.py"] for name in ("check_count", "distinct_subjects", "draw", "generator",
                                                        "relation_weights", "usable_relations")}, found


def _is_property(node: ast.FunctionDef) -> bool:
    return any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)
