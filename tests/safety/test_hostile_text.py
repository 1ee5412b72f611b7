"""Hostile text input to the text task (issue 28 items 7-12, 17, 19; issue 26 item 2: BOS per model).

Every case is refused in one line or handled by mechanism: roles never share a token, user text never becomes
a special token, templates are plain ``{s}``/``{a}``, prompts are checked against the model's n_ctx and
d_vocab, forwards fit a memory estimate.  Property tests (hypothesis) run on the SmolLM2 tokenizer.
"""

import math
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.text import TextICRecallTask

SMOL = sorted(Path.home().glob(".cache/icr_interp/pretrained/smollm2-135m/v*/tokenizer"))
PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def smol():
    if not SMOL:
        pytest.skip("no cached SmolLM2 tokenizer (make setup converts the model)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOL[-1])


def _kb(facts) -> KnowledgeBase:
    return KnowledgeBase.from_triplets([tuple(f) for f in facts])


def _quiet(*args, **kwargs) -> TextICRecallTask:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return TextICRecallTask(*args, **kwargs)


def _disjoint(batch) -> bool:
    m = batch.layout.span_masks(batch.tokens.shape[1])
    owners = m.subject.sum(1) + m.answer.sum(1) + m.query.long() + m.bos.long()
    return bool((owners <= 1).all())


# --------------------------------------------------------------- item 7: a position in two roles
def test_merges_across_a_boundary_are_redrawn(smol):
    kb = _kb([(s, "r", a) for s, a in zip(("ing", "ed", "er", "ion", "ly", "s"), ("walk", "jump") * 3)])
    with pytest.warns(UserWarning, match="two roles"):
        task = TextICRecallTask(kb, smol, n_pairs=1, pair_template="{s}={a}", query_template="{s}=",
                                prepend_bos=False).with_pairs(1)
        batch = task.sample(16, seed=0)
    assert _disjoint(batch) and task.n_redrawn > 0


@PROPERTY
@given(names=st.lists(st.text("abejmnorsu", min_size=1, max_size=4), min_size=8, max_size=8, unique=True),
       template=st.sampled_from(["{s}{a}", "{s}={a}", "{s}: {a}\n", "{s} {a}"]))
def test_no_position_ever_has_two_roles(smol, names, template):
    shifted = names[5:] + names[4:5]
    kb = _kb([(s, "r", a) for s, a in zip(names[:4], names[4:])] + [(s, "q", a) for s, a in zip(names[:4], shifted)])
    try:
        task = _quiet(kb, smol, n_pairs=1, pair_template=template, query_template=template.split("{a}")[0],
                      prepend_bos=False)
        batch = task.sample(8, seed=0)
    except ValueError as e:  # refused: one line
        assert "\n" not in str(e)
        return
    assert _disjoint(batch)


# --------------------------------------------------------------- item 8: why no relation fills a prompt
def test_shared_first_tokens_are_named_in_the_error(smol, monkeypatch):
    kb = _kb([(f"Country{i}", "capital", f"Newcity{i}") for i in range(6)])
    with pytest.raises(ValueError, match=r"once 6 answer\(s\) sharing their first token .* excluded"):
        _quiet(kb, smol, n_pairs=2, prepend_bos=False)
    from icr_interp.task import text

    monkeypatch.setattr(text, "targets_in_chunks", lambda *a: pytest.fail("tokenized before the cheap check"))
    with pytest.raises(ValueError, match="the most any relation knows is 6"):
        _quiet(kb, smol, n_pairs=6, prepend_bos=False)


# --------------------------------------------------------------- item 9: text is never a control token
@PROPERTY
@given(name=st.sampled_from(["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<repo_name>", "<file_sep>"]),
       tail=st.text("ab <>|", max_size=3))
def test_special_token_spellings_stay_text(smol, name, tail):
    subjects = [name + tail, "Peru", "Chile", "Kenya"]
    kb = _kb([(s, "r", a) for s, a in zip(subjects, ("Lima", "Nairobi", "Cairo", "Rome"))])
    task = _quiet(kb, smol, n_pairs=2, prepend_bos=False)
    for seed in range(3):
        batch = task.sample(4, seed=seed)
        real = batch.tokens[batch.layout.span_masks(batch.tokens.shape[1]).padding.logical_not()]
        assert not torch.isin(real, torch.tensor(smol.all_special_ids)).any()


# --------------------------------------------------------------- item 12: plain fields only
@pytest.mark.parametrize("pair", ["{s!r}: {a}\n", "{s:>99999999}: {a}\n", "{s:d}: {a}\n", "{{s}}{s:>999}:{a}",
                                  "{s.upper}: {a}", "{s[0]}: {a}", "{0}{s}{a}"])
def test_templates_take_plain_fields_only(smol, pair):
    kb = _kb([(s, "r", a) for s, a in zip("ABCD", "WXYZ")])
    with pytest.raises(ValueError, match="fields must be plain") as e:
        TextICRecallTask(kb, smol, n_pairs=1, pair_template=pair, prepend_bos=False)
    assert "pair_template" in str(e.value) and "\n" not in str(e.value)


@PROPERTY
@given(before=st.text(" :=\n{}ab", max_size=4), between=st.text(" :=\n{}ab", min_size=1, max_size=4))
def test_a_plain_template_renders_the_names_exactly(smol, before, between):
    from icr_interp.task import text_spans as T

    template = before + "{s}" + between + "{a}"
    try:
        T.check_template(template, ("s", "a"), "pair_template")
    except ValueError as e:
        assert "\n" not in str(e).replace("\\n", "")
        return
    text, spans = T.render(template, s="Peru", a="Lima")
    assert text[slice(*spans["s"])] == "Peru" and text[slice(*spans["a"])] == "Lima"
    assert len(text) == len(template.format(s="Peru", a="Lima"))


# --------------------------------------------------------------- issue 26 item 2: BOS per model
def test_bos_follows_the_model(tiny_smol_llama):
    model, kb = tiny_smol_llama, _kb([(s, "r", a) for s, a in zip(("France", "Japan", "Italy"), ("Paris", "Tokyo",
                                                                                                 "Rome"))])
    bos = model.tokenizer.bos_token_id
    plain = TextICRecallTask(kb, model, n_pairs=1)  # SmolLM2: default_prepend_bos False
    with_bos = TextICRecallTask(kb, model, n_pairs=1, prepend_bos=True)
    a, b = plain.sample(6, seed=0), with_bos.sample(6, seed=0)
    assert not plain.bos and (a.tokens[:, 0] != bos).all() and (a.layout.bos_pos == -1).all()
    assert with_bos.bos and (b.tokens[:, 0] == bos).all() and (b.layout.bos_pos == 0).all()
    assert torch.equal(b.layout.query_end, a.layout.query_end + 1) and torch.equal(b.answers, a.answers)
    assert plain.prompt_text(a, 0) == with_bos.prompt_text(b, 0)
    model.cfg.default_prepend_bos = True  # a Gemma-like model: its cfg decides
    try:
        assert TextICRecallTask(kb, model, n_pairs=1).bos
    finally:
        model.cfg.default_prepend_bos = False


# --------------------------------------------------------------- items 10, 11, 19: models that don't fit
def test_models_that_do_not_fit_are_named(tiny_smol_llama, monkeypatch):
    from icr_interp.training.trainer import evaluate

    model, kb = tiny_smol_llama, _kb([(s, "r", a) for s, a in zip(("France", "Japan", "Italy"), ("Paris", "Tokyo",
                                                                                                 "Rome"))])
    tok = model.tokenizer
    with pytest.raises(ValueError, match=r"exceed the model's context n_ctx=128"):
        TextICRecallTask(kb, model, n_pairs=2, pair_template="{s} " + "word " * 200 + "{a}\n")
    long = TextICRecallTask(kb, tok, n_pairs=2, prefix="word " * 200, prepend_bos=False)  # no model: no n_ctx known
    with pytest.raises(ValueError, match=r"exceed the model's context n_ctx=128"):
        evaluate(model, long, n_prompts=4)
    monkeypatch.setattr(model, "tokenizer", None)
    with pytest.raises(ValueError, match=r"the model has no tokenizer"):
        TextICRecallTask(kb, model, n_pairs=1)
    monkeypatch.setattr(model, "tokenizer", tok)
    monkeypatch.setattr(model.cfg, "d_vocab", 1000)
    with pytest.raises(ValueError, match=r"d_vocab is 1000: the tokenizer .* does not match"):
        TextICRecallTask(kb, model, n_pairs=1)
    with pytest.raises(ValueError, match=r"d_vocab is 1000: the task's tokenizer does not match"):
        evaluate(model, TextICRecallTask(kb, tok, n_pairs=1, prepend_bos=False), n_prompts=4)


def test_evaluate_splits_forwards_to_fit_memory(tiny_smol_llama, monkeypatch):
    from icr_interp.task import limits
    from icr_interp.training.trainer import evaluate

    kb = _kb([(s, "r", a) for s, a in zip(("France", "Japan", "Italy", "Peru"), ("Paris", "Tokyo", "Rome", "Lima"))])
    task = TextICRecallTask(kb, tiny_smol_llama, n_pairs=2)
    whole = evaluate(tiny_smol_llama, task, n_prompts=12, batch_size=12)
    one = limits.forward_bytes(1, 14, 4, 32, 64, tiny_smol_llama.cfg.d_vocab)
    monkeypatch.setenv(limits.ENV, str(3 * one))  # three prompts per forward
    split = evaluate(tiny_smol_llama, task, n_prompts=12, batch_size=12)
    assert split["accuracy"] == whole["accuracy"] and math.isclose(split["loss"], whole["loss"], rel_tol=1e-5)
    monkeypatch.setenv(limits.ENV, "100K")  # the prompts can be tokenized, not run
    with pytest.raises(ValueError, match=r"the model's forward on one prompt of \d+ tokens needs about"):
        evaluate(tiny_smol_llama, task, n_prompts=4)


# --------------------------------------------------------------- item 17: named baselines, said once
def test_missing_named_baseline_is_said_once(tiny_smol_llama):
    from icr_interp.analysis.recall import recall_curve

    kb = _kb([(s, r, a) for s, a in zip(("France", "Japan", "Italy", "Peru"), ("Paris", "Tokyo", "Rome", "Lima"))
              for r in ("largest city", "motto")] + [("India", "largest city", "New Delhi"),
                                                     ("Mexico", "largest city", "New York")])
    with pytest.warns(UserWarning, match="share their first token"):
        task = TextICRecallTask(kb, tiny_smol_llama, n_pairs=1)
    assert "largest city" in task.relation_phrases and task.unnamed == ("motto",)  # matched to largest_city
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        curve = recall_curve(tiny_smol_llama, task, ks=[0, 1, 2], n_prompts=4)
    said = [str(w.message) for w in caught]
    assert sum("no named baseline" in m for m in said) == 1 and not any("share their first" in m for m in said)
    assert curve.unnamed == ("motto",) and "no named baseline for motto" in str(curve)


def test_sampling_refuses_prompts_too_large_to_tokenize(smol, monkeypatch):
    from icr_interp.task import limits

    kb = _kb([("x" * 5000, "r", "Lima")] + [(s, "r", a) for s, a in zip(("Peru", "Chile", "Kenya"),
                                                                         ("Rome", "Cairo", "Oslo"))])
    task = _quiet(kb, smol, n_pairs=2, prepend_bos=False)
    assert len(task.sample(2, seed=0)) == 2
    monkeypatch.setenv(limits.ENV, "64M")
    with pytest.raises(ValueError, match=r"tokenizing 1000 prompts of up to \d+ bytes needs about .* ICR_INTERP_MAX"):
        task.sample(1000, seed=0)
