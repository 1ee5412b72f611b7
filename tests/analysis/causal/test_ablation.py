"""Ablations (icr_interp.analysis.causal.ablation) on the fine-tuned reference model: what the model cannot do without."""

import json
import math
from pathlib import Path

import pytest
import torch
from icr_interp.tl.compat import HookedTransformer, HookedTransformerConfig

from icr_interp import ICRecallTask, KnowledgeBase, build_model, load_checkpoint, save_checkpoint
from icr_interp import _moved
from icr_interp.analysis.causal import ablation as A
from icr_interp.task import roles
from icr_interp.training.trainer import finetune

N_PROMPTS = 256


@pytest.fixture(scope="module")
def reference(reference_checkpoint):
    ck = load_checkpoint(reference_checkpoint)
    return ck.model, ck.task, ck.task.sample(N_PROMPTS, seed=3)


def no_hooks_left(model: HookedTransformer) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


def test_the_model_recalls(reference):
    model, _, batch = reference
    r = A.ablate_role_values(model, batch, "bos", "mean")  # BOS is never attended: a no-op
    assert r.base_accuracy > 0.95 and r.accuracy == r.base_accuracy and r.loss == pytest.approx(r.base_loss)


@pytest.mark.parametrize("method", A.METHODS)
def test_ablating_either_member_of_the_pairs_breaks_recall(reference, method):
    """Measured accuracy (256 prompts): mean 0.012 / 0.047, zero 0.008 / 0.039, resample 0.125 / 0.121
    (resampling keeps another prompt's relation: ~1/8 by luck)."""
    model, _, batch = reference
    for role in ("subjects", "answers"):
        r = A.ablate_role_values(model, batch, role, method)
        assert r.accuracy < 0.3, (role, method)
        assert r.accuracy_drop == pytest.approx(r.base_accuracy - r.accuracy) and r.loss > r.base_loss + 2
    assert no_hooks_left(model)


@pytest.mark.parametrize("method", A.METHODS)
def test_the_query_reaches_the_memory_through_the_residual(reference, method):
    """Ablating the query's *value* (what attention could copy from it) changes nothing: measured 1.000."""
    model, _, batch = reference
    r = A.ablate_role_values(model, batch, "query", method)
    assert r.accuracy >= r.base_accuracy - 0.02 and r.loss == pytest.approx(r.base_loss, abs=0.05)


def test_the_memory_needs_both_halves_of_each_pair(reference):
    """Query row restricted (renormalised): subjects + answers 1.000, subjects only 0.176, answers only 0.145."""
    model, _, batch = reference
    both = A.restrict_pattern(model, batch, ("subjects", "answers"))
    assert both.method == "restrict" and both.accuracy >= both.base_accuracy - 0.02
    assert A.restrict_pattern(model, batch, ("context",)).accuracy == both.accuracy  # context = both members
    for keep in (("subjects",), ("answers",)):
        assert A.restrict_pattern(model, batch, keep).accuracy < 0.5
    assert A.restrict_pattern(model, batch, ("bos",)).accuracy < 0.1  # nothing to infer the relation from
    assert no_hooks_left(model)


def test_without_the_relation_vector_recall_is_at_chance(reference):
    """Zero-ablating stage I: no lookup neuron fires, every logit is equal, loss = log(vocab) (measured 4.920)."""
    model, task, batch = reference
    r = A.ablate_hook(model, batch, "blocks.0.mlp.hook_relation", "zero")
    # Every logit is equal up to float rounding, so the argmax is a coin toss among ties: chance level.
    assert r.accuracy <= 3 / task.kb.n_answers
    assert r.loss == pytest.approx(math.log(model.cfg.d_vocab), abs=1e-3)
    mean = A.ablate_hook(model, batch, "blocks.0.mlp.hook_relation", "mean")  # the average relation: 0.230
    assert mean.accuracy < 0.5


def test_heads_and_neuron_groups(reference):
    model, _, batch = reference
    head = A.ablate_head(model, batch, 0, 0, "mean")
    assert head.name == "head L0H0" and head.accuracy < 0.3  # the only head carries the context
    post = "blocks.0.mlp.hook_post"
    all_neurons = A.ablate_hook(model, batch, post, "zero")
    assert all_neurons.accuracy <= 3 / 64  # no lookup neuron: ties everywhere, chance level
    few = A.ablate_hook(model, batch, post, "zero", index=slice(0, 8))
    assert few.name == f"{post}[0:8]" and few.accuracy > all_neurons.accuracy
    assert no_hooks_left(model)


def test_methods_and_names_are_validated(reference):
    model, _, batch = reference
    small = batch[:8]
    calls = [lambda: A.ablate_role_values(model, small, "subjects", "median"),
             lambda: A.ablate_head(model, small, 0, 0, "median"),
             lambda: A.ablate_hook(model, small, "blocks.0.mlp.hook_relation", "median"),
             lambda: A.standard_ablations(model, small, "median")]
    for call in calls:
        with pytest.raises(ValueError, match=r"ablation method must be one of \('zero', 'mean', 'resample'\)"):
            call()
        assert no_hooks_left(model)  # a failed ablation leaves no hook behind either
    with pytest.raises(ValueError, match=r"^unknown role 'pair'; roles are subjects, answers"):
        A.ablate_role_values(model, small, "pair", "mean")
    with pytest.raises(ValueError, match="out of range for k=4"):
        A.restrict_pattern(model, small, ("pair_5",))
    with pytest.raises(ValueError, match="unknown hook"):
        A.ablate_hook(model, small, "blocks.0.mlp.hook_nothing", "mean")


def test_standard_ablations_table(reference):
    model, _, batch = reference
    results = A.standard_ablations(model, batch[:64], "mean")
    names = [r.name for r in results]
    assert names == ["values at subject positions", "values at answer positions", "values at query positions",
                     "query attends to subject only", "query attends to answer only",
                     "query attends to subject+answer only", "head L0H0", "blocks.0.mlp.hook_relation"]
    assert {r.method for r in results} == {"mean", "restrict"}
    assert len({r.base_accuracy for r in results}) == 1
    d = json.loads(json.dumps([r.to_dict() for r in results]))
    assert set(d[0]) == {"name", "method", "accuracy", "loss", "base_accuracy", "base_loss", "accuracy_drop"}
    table = A.format_table(results).splitlines()
    assert len(table) == len(results) + 1 and table[1].startswith("values at subject positions")
    assert f"{-results[0].accuracy_drop:+7.3f}" in table[1]
    assert no_hooks_left(model)


# ------------------------------------------------------------ roles, layers and token ids (the shared helpers)
def test_singular_roles_still_work_with_a_deprecation_warning(reference):
    """The first release's "subject"/"answer" read as "subjects"/"answers": same numbers, same names."""
    model, _, batch = reference
    small = batch[:64]
    for singular, plural in (("subject", "subjects"), ("answer", "answers")):
        with pytest.deprecated_call(match=f"'{singular}' is deprecated since icr_interp 0.2; write '{plural}' .*0.4"):
            old = A.ablate_role_values(model, small, singular, "mean")
        new = A.ablate_role_values(model, small, plural, "mean")
        assert old == new and new.name == f"values at {singular} positions"
        with pytest.deprecated_call():
            assert A.restrict_pattern(model, small, (singular,)) == A.restrict_pattern(model, small, (plural,))
    n_pos, rows = small.tokens.shape[1], torch.arange(64)
    expected = torch.zeros(64, n_pos, dtype=torch.bool)
    expected[rows, small.layout.subject_end[:, 0]] = expected[rows, small.layout.answer_end[:, 0]] = True
    assert torch.equal(roles.mask(small.layout, "pair_1", n_pos), expected)  # every role of task.roles works
    _moved._warned.discard("icr_interp.analysis.causal.ablation.role_mask")  # each old name warns once per process
    with pytest.deprecated_call(match="ablation.role_mask moved to icr_interp.task.roles.mask"):
        old_mask = A.role_mask  # the first release's wrapper; it took the Batch, which task.roles.mask accepts
    assert old_mask is roles.mask and torch.equal(old_mask(small, "pair_1", n_pos), expected)


def test_the_default_layer_is_the_last(shared_task):
    """On a 2-layer model every ablation without ``layer`` acts on layer 1 (not 0, the first release's default).

    A random-weight stock model, so that ablating either layer moves the loss (our constructed 2-layer model's
    first layer barely reaches the output).
    """
    built = build_model(shared_task, n_layers=2, n_heads=2)
    batch = shared_task.sample(32, seed=0)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=built.cfg.d_vocab,
                                  n_ctx=batch.tokens.shape[1], act_fn="gelu", normalization_type="LN", seed=0)
    model = HookedTransformer(cfg)
    default = A.ablate_role_values(model, batch, "answers", "zero")
    last = A.ablate_role_values(model, batch, "answers", "zero", layer=1)
    first = A.ablate_role_values(model, batch, "answers", "zero", layer=0)
    restricted = A.restrict_pattern(model, batch, ("subjects",))
    assert default == last and default.loss != pytest.approx(first.loss, abs=1e-4)
    assert restricted == A.restrict_pattern(model, batch, ("subjects",), layer=-1)
    assert restricted.loss != pytest.approx(A.restrict_pattern(model, batch, ("subjects",), layer=0).loss, abs=1e-4)
    names = [r.name for r in A.standard_ablations(built, batch, "mean")]
    assert names[-3:] == ["head L1H0", "head L1H1", "blocks.1.mlp.hook_relation"]
    with pytest.raises(ValueError, match=r"layer must be an integer in \[-2, 2\)"):
        A.ablate_role_values(model, batch, "answers", layer=2)
    assert no_hooks_left(model)


@pytest.mark.parametrize("bad", [-1, 10_000])
def test_token_ids_are_checked_in_one_line(reference, bad):
    model, _, batch = reference
    small = batch[:8]
    tokens = small.tokens.clone()
    tokens[3, 2] = bad
    broken = type(small)(tokens, small.answers, small.relations, small.subjects, small.query, small.layout)
    vocab = model.cfg.d_vocab
    for call in (lambda: A.ablate_role_values(model, broken, "answers"), lambda: A.ablate_head(model, broken, 0, 0),
                 lambda: A.restrict_pattern(model, broken, ("answers",)), lambda: A.standard_ablations(model, broken)):
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and f"token id {bad}" in message and f"[0, {vocab})" in message
    assert no_hooks_left(model)
