"""Issue 20 items 9 and 14: empty batches and batches shorter than their layout fail in one line, before any work."""

from dataclasses import replace

import pytest

from icr_interp.analysis.causal import circuit
from icr_interp.analysis.causal.ablation import standard_ablations
from icr_interp.analysis.scoring.templates import score_templates
from icr_interp.model.builder import build_model


@pytest.fixture(scope="module")
def model_and_task(shared_task):
    return build_model(shared_task, seed=0), shared_task


def _calls(model, task):
    return {"score_templates": lambda b: score_templates(model, b),
            "standard_ablations": lambda b: standard_ablations(model, b),
            "circuit_summary": lambda b: circuit.circuit_summary(model, task, b)}


@pytest.mark.parametrize("name", ["score_templates", "standard_ablations", "circuit_summary"])
def test_an_empty_batch_is_refused(model_and_task, name):
    model, task = model_and_task
    with pytest.raises(ValueError, match="batch is empty") as err:
        _calls(model, task)[name](task.sample(0, seed=0))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["score_templates", "standard_ablations", "circuit_summary"])
def test_tokens_shorter_than_their_layout_are_refused(model_and_task, name):
    model, task = model_and_task
    batch = task.sample(8, seed=0)
    short = replace(batch, tokens=batch.tokens[:, :-2])
    with pytest.raises(ValueError, match="tokens and layout do not match") as err:
        _calls(model, task)[name](short)
    assert "\n" not in str(err.value)


def test_knowledge_base_and_task_print_one_short_line(shared_task):
    """Issue 21: ``print(kb)`` and ``print(task)`` say what they are in one line, not a tensor dump."""
    kb_text, task_text = repr(shared_task.kb), repr(shared_task)
    assert "\n" not in kb_text and len(kb_text) < 200 and "tensor" not in kb_text
    assert kb_text.startswith(f"KnowledgeBase({shared_task.kb.n_subjects} subjects, {shared_task.kb.n_relations} "
                              f"relations") and f"{shared_task.kb.n_triplets} facts" in kb_text
    assert task_text == f"ICRecallTask(n_pairs={shared_task.n_pairs}, bos=True, kb={kb_text})"


def test_a_summary_of_one_job_says_nothing_of_the_other(model_and_task):
    """Issue 21: with the relation swap alone, no cell reads nan and the verdict never cites answer lookup
    as measured; a member the swap leaves unchanged (the subjects) is not cited with its zero."""
    model, task = model_and_task
    summary = circuit.circuit_summary(model, task, task.sample(64, seed=0), seed=1, jobs=("relation",))
    text = str(summary)
    assert "nan" not in text.lower() and "not measured" in text
    verdict = summary.verdict
    assert "answer lookup not measured" in verdict and "both jobs" not in verdict
    assert "subjects 0.00" not in verdict
