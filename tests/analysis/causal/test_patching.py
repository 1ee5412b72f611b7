"""Activation patching: drop-ins equal transformer_lens.patching, role patching, attribution patching."""

import json
import os

import pytest
import torch
from icr_interp.tl.compat import HookedTransformer, HookedTransformerConfig

os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching's per-cell progress bars
import transformer_lens.patching as tl_patching  # noqa: E402

from icr_interp import Batch, ICRecallTask, KnowledgeBase, Layout, build_model  # noqa: E402

from icr_interp.analysis.causal import ablation
from icr_interp.analysis.causal import patching as P  # noqa: E402
from icr_interp.analysis import stats  # noqa: E402
from icr_interp.analysis.causal import reliability
from icr_interp.model import forward
from icr_interp.model import hooks as H
from icr_interp.task import roles as R
from icr_interp.training.trainer import finetune  # noqa: E402

# Untrained fixtures are at chance: their role patching warns that it is unreliable (asserted where it matters).
pytestmark = pytest.mark.filterwarnings("ignore:normalised patching values:RuntimeWarning",
                                        "ignore:.*normalised patching values outside:RuntimeWarning")

DROP_INS = ("get_act_patch_resid_pre", "get_act_patch_attn_out", "get_act_patch_mlp_out",
            "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_pattern_dest_src_pos")
TOL = 1e-4


def all_positions_metric(logits: torch.Tensor) -> torch.Tensor:
    """Reads every position of every example: mean log-probability of token 3."""
    return logits.log_softmax(-1)[..., 3].mean()


def no_hooks_left(model: HookedTransformer) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


# ------------------------------------------------------------ drop-ins
@pytest.fixture(scope="module")
def ic_small():
    """The small IC-recall model (exact basis, 1 head), a batch and its two corruptions."""
    task = ICRecallTask(KnowledgeBase.random(16, 4, 16, 1.0, seed=0), n_pairs=2)
    model = build_model(task)
    clean = task.sample(8, seed=0)
    return model, clean, {kind: task.corrupt(clean, kind, seed=1) for kind in ("relation", "query")}


@pytest.fixture(scope="module")
def ic_crosstalk():
    """Same task, d_model 40 (random basis: every position reaches the logits) and 2 heads; relation swap."""
    task = ICRecallTask(KnowledgeBase.random(16, 4, 16, 1.0, seed=0), n_pairs=2)
    model = build_model(task, d_model=40, n_heads=2)
    clean = task.sample(8, seed=2)
    return model, clean, task.corrupt(clean, "relation", seed=3)


@pytest.fixture(scope="module")
def stock():
    """A stock 2-layer, 2-head HookedTransformer with LayerNorm, random weights and tokens."""
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, d_vocab=50, n_ctx=8,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    gen = torch.Generator().manual_seed(0)
    clean, corrupted = torch.randint(50, (4, 7), generator=gen), torch.randint(50, (4, 7), generator=gen)
    return HookedTransformer(cfg), clean, corrupted


def ic_metrics(clean: Batch, corrupted: Batch):
    return {"logit_diff": P.logit_diff_metric(clean.answers, corrupted.answers, clean.layout.query_end),
            "all_positions": all_positions_metric}


def assert_drop_ins_match(model, clean_tokens, corrupted_tokens, metric, fast_options=(None, False)):
    _, clean_cache = model.run_with_cache(clean_tokens)
    for name in DROP_INS:
        ref = getattr(tl_patching, name)(model, corrupted_tokens, clean_cache, metric)
        assert ref.abs().max() > 0
        for fast in fast_options:
            ours = getattr(P, name)(model, corrupted_tokens, clean_cache, metric, fast=fast)
            assert ours.shape == ref.shape, name
            assert ours.device == ref.device and ours.dtype == ref.dtype
            assert torch.allclose(ours, ref, atol=TOL, rtol=0), (name, fast, (ours - ref).abs().max().item())
    assert no_hooks_left(model)


@pytest.mark.parametrize("kind", ["relation", "query"])
@pytest.mark.parametrize("metric_name", ["logit_diff", "all_positions"])
def test_drop_ins_equal_transformer_lens_on_ic_model(ic_small, metric_name, kind):
    model, clean, corruptions = ic_small
    corrupted = corruptions[kind]
    assert forward.query_path_applies(model)
    assert_drop_ins_match(model, clean.tokens, corrupted.tokens, ic_metrics(clean, corrupted)[metric_name])


@pytest.mark.parametrize("metric_name", ["logit_diff", "all_positions"])
def test_drop_ins_equal_transformer_lens_multi_head_crosstalk(ic_crosstalk, metric_name):
    model, clean, corrupted = ic_crosstalk
    assert_drop_ins_match(model, clean.tokens, corrupted.tokens, ic_metrics(clean, corrupted)[metric_name])


def test_all_positions_metric_sees_context_patches(ic_crosstalk):
    """With crosstalk, patches at context positions move an all-positions metric: the assembly must be exact."""
    model, clean, corrupted = ic_crosstalk
    _, cache = model.run_with_cache(clean.tokens)
    ours = P.get_act_patch_attn_out(model, corrupted.tokens, cache, all_positions_metric)
    base = all_positions_metric(model(corrupted.tokens)).item()
    assert (ours[0, :-1] - base).abs().max() > 1e-3  # not only the query row matters


@pytest.mark.parametrize("metric", [
    lambda logits: logits[:, -1, 3].mean() - logits[:, -1, 5].mean(),  # last position, mean over batch
    all_positions_metric,
    lambda logits: logits[0, 2].max() - logits[:, :, 7].mean(),  # one example, one row, plus everything
])
def test_drop_ins_equal_transformer_lens_on_stock_model(stock, metric):
    model, clean, corrupted = stock
    assert not forward.query_path_applies(model)
    assert_drop_ins_match(model, clean, corrupted, metric, fast_options=(None,))


def test_small_chunks_and_shared_base_run(ic_small):
    """Chunking (rows and assembled logits) and a shared base run give the same numbers."""
    model, clean, corruptions = ic_small
    corrupted = corruptions["relation"]
    _, cache = model.run_with_cache(clean.tokens)
    metric = all_positions_metric
    ref = P.get_act_patch_attn_head_pattern_dest_src_pos(model, corrupted.tokens, cache, metric)
    base = P.base_run(model, corrupted.tokens)
    for options in (dict(max_rows=5, max_logits_bytes=1), dict(base_run=base)):
        got = P.get_act_patch_attn_head_pattern_dest_src_pos(model, corrupted.tokens, cache, metric, **options)
        assert torch.allclose(got, ref, atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="other tokens"):
        P.get_act_patch_resid_pre(model, clean.tokens, cache, metric, base_run=base)


def test_metric_view_of_logits_is_not_overwritten(ic_small):
    """A metric returning a view of the (reused) logits buffer keeps its own value."""
    model, clean, corruptions = ic_small
    corrupted = corruptions["relation"]
    _, cache = model.run_with_cache(clean.tokens)
    view_metric = lambda logits: logits[0, -1, clean.answers[0]]  # noqa: E731
    ref = tl_patching.get_act_patch_attn_out(model, corrupted.tokens, cache, view_metric)
    assert torch.allclose(P.get_act_patch_attn_out(model, corrupted.tokens, cache, view_metric), ref, atol=TOL)


# ------------------------------------------------------------ metric and roles
def test_logit_diff_normalised(ic_small):
    model, clean, corruptions = ic_small
    corrupted = corruptions["relation"]
    clean_logits, corr_logits = model(clean.tokens), model(corrupted.tokens)
    metric = P.logit_diff_metric(clean.answers, corrupted.answers, clean.layout.query_end,
                                 clean_logits=clean_logits, corrupted_logits=corr_logits)
    assert metric(clean_logits).item() == pytest.approx(1.0, abs=1e-5)
    assert metric(corr_logits).item() == pytest.approx(0.0, abs=1e-5)
    raw = P.logit_diff_metric(clean.answers, corrupted.answers)  # default: last position = the query here
    assert raw(clean_logits).item() == pytest.approx(metric.clean_value, abs=1e-5)


def test_role_masks_are_per_example():
    layout = Layout(subject_end=torch.tensor([[1, 3], [3, 1]]), answer_end=torch.tensor([[2, 4], [4, 2]]),
                    query_end=torch.tensor([5, 5]), bos_pos=torch.tensor([0, -1]))
    masks = R.masks(layout, 6)
    assert list(masks) == ["subjects", "answers", "context", "pair_1", "pair_2", "query", "bos"]
    assert masks["pair_1"].nonzero().tolist() == [[0, 1], [0, 2], [1, 3], [1, 4]]
    assert masks["bos"].tolist() == [[True] + [False] * 5, [False] * 6]
    assert masks["context"].sum().item() == 8 and masks["query"][:, 5].all()
    assert R.masks(layout, 6, ["answer_2", "subject_1"])["answer_2"].nonzero().tolist() == [[0, 4], [1, 2]]
    with pytest.raises(ValueError):
        R.masks(layout, 6, ["pair_3"])
    with pytest.raises(ValueError):
        R.masks(layout, 6, ["verb"])


def relabel_pairs(batch: Batch) -> Batch:
    """Same prompts, but odd examples call their second pair "pair 1" (a truthful, per-example layout)."""
    lay = batch.layout
    flip = torch.arange(len(batch)) % 2 == 1
    order = torch.where(flip[:, None], torch.tensor([1, 0]), torch.tensor([0, 1]))
    new = Layout(lay.subject_end.gather(1, order), lay.answer_end.gather(1, order), lay.query_end, lay.bos_pos)
    return Batch(batch.tokens, batch.answers, batch.relations, batch.subjects.gather(1, order), batch.query, new)


def test_patch_by_role_uses_each_examples_positions(ic_crosstalk):
    """Against a naive reference: one hooked forward with a mask built example by example."""
    model, clean, corrupted = ic_crosstalk
    clean, corrupted = relabel_pairs(clean), relabel_pairs(corrupted)
    hook = "blocks.0.hook_resid_pre"
    got = P.patch_by_role(model, clean, corrupted, hooks=[hook], roles=["pair_1", "answer_1"])
    _, cache = model.run_with_cache(clean.tokens)
    metric = P.LogitDiff(clean.answers, corrupted.answers, clean.layout.query_end)
    for role, positions in (("pair_1", [clean.layout.subject_end, clean.layout.answer_end]),
                            ("answer_1", [clean.layout.answer_end])):
        def patch(act, hook):
            act = act.clone()
            for b in range(len(clean)):
                for pos in positions:
                    act[b, pos[b, 0]] = cache[hook.name][b, pos[b, 0]]
            return act
        ref = metric(model.run_with_hooks(corrupted.tokens, fwd_hooks=[(hook, patch)])).item()
        assert got.raw[0, got.roles.index(role)].item() == pytest.approx(ref, abs=TOL)
    assert no_hooks_left(model)


def test_role_patching_fast_equals_general(ic_crosstalk):
    model, clean, corrupted = ic_crosstalk
    hooks = H.component_hooks(model) + ["blocks.0.attn.hook_pattern"]
    assert "blocks.0.mlp.hook_relation" in hooks and "blocks.0.hook_mlp_out" in hooks
    assert not {"blocks.0.mlp.hook_post", "blocks.0.mlp.hook_rel_post"} & set(hooks)  # N-wide: only when asked
    fast = P.patch_by_role(model, clean, corrupted, hooks=hooks)
    general = P.patch_by_role(model, clean, corrupted, hooks=hooks, fast=False)
    assert fast.components == general.components and len(fast.components) == len(hooks) + 2  # 2 heads x 2
    assert torch.allclose(fast.raw, general.raw, atol=TOL, rtol=0)


@pytest.mark.parametrize("hook", ["blocks.0.attn.hook_q", "blocks.0.attn.hook_k", "blocks.0.attn.hook_v",
                                  "blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_result",
                                  "blocks.0.hook_resid_mid", "blocks.0.mlp.hook_rel_pre", "blocks.0.mlp.hook_pre",
                                  "blocks.0.hook_resid_post"])
def test_every_fast_path_class_equals_the_general_path(ic_crosstalk, hook):
    """Per-example masks on every kind of hook the one-layer shortcut handles, against stacked hooked forwards."""
    model, clean, corrupted = ic_crosstalk
    model.cfg.use_attn_result = True  # so that hook_result fires
    try:
        roles = ["context", "pair_2", "query", "all"]
        fast = P.patch_by_role(model, clean, corrupted, all_positions_metric, hooks=[hook], roles=roles)
        general = P.patch_by_role(model, clean, corrupted, all_positions_metric, hooks=[hook], roles=roles,
                                  fast=False)
    finally:
        model.cfg.use_attn_result = False
    assert torch.allclose(fast.raw, general.raw, atol=TOL, rtol=0)
    assert (fast.raw - fast.corrupted_value).abs().max() > 1e-5  # the patches do something


def test_degenerate_normalisation_warns(ic_small):
    model, clean, _ = ic_small
    with pytest.warns(RuntimeWarning, match="almost the same"):
        r = P.patch_by_role(model, clean, clean, hooks=["blocks.0.hook_attn_out"], roles=["query"])
    assert not r.reliable and "almost the same" in r.reason and r.reliability["gap"] == 0.0
    assert r.to_dict()["reliable"] is False and r.to_dict()["reason"] == r.reason
    assert str(r).splitlines()[1] == f"UNRELIABLE: {r.reason}"


def test_role_result_serialises_and_prints(ic_small):
    model, clean, corruptions = ic_small
    corrupted = corruptions["relation"]
    result = P.patch_pattern_by_role(model, clean, corrupted)
    assert result.components == ["blocks.0.attn.hook_pattern:h0"]
    back = json.loads(json.dumps(result.to_dict()))
    assert back["roles"] == result.roles and back["mode"] == "denoise" and back["method"] == "exact"
    text = str(result)
    assert "pair_2" in text and "hook_pattern:h0" in text


# ------------------------------------------------------------ the reference model
@pytest.fixture(scope="module")
def reference():
    """The reference configuration fine-tuned as in the paper: 64 subjects, 8 relations, k = 4."""
    task = ICRecallTask(KnowledgeBase.random(64, 8, 64, 1.0, seed=0), n_pairs=4)
    model = build_model(task)
    finetune(model, task, steps=200, progress=False)
    clean = task.sample(64, seed=1)
    runs = {kind: (clean, task.corrupt(clean, kind, seed=2)) for kind in ("relation", "query")}
    # the N-wide neuron hooks are not default hooks (patching.core.MEMORY_HOOKS); asked for here
    hooks = H.component_hooks(model) + ["blocks.0.mlp.hook_rel_post", "blocks.0.mlp.hook_post",
                                        "blocks.0.attn.hook_pattern"]
    exact = {kind: P.patch_by_role(model, c, x, hooks=hooks) for kind, (c, x) in runs.items()}
    return model, runs, hooks, exact


def test_neuron_hooks_patched_whole_equal_their_outputs(reference):
    """Why the defaults patch hook_relation and hook_mlp_out instead of the N-wide neuron hooks:
    every stage's output is a read-out of its neurons, so patching all of them is the same patch."""
    _, _, _, exact = reference
    for r in exact.values():
        for neurons, output in (("blocks.0.mlp.hook_rel_post", "blocks.0.mlp.hook_relation"),
                                ("blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out")):
            i, j = r.components.index(neurons), r.components.index(output)
            assert torch.allclose(r.values[i], r.values[j], atol=1e-4, rtol=0), (neurons, output)


def test_the_reference_results_are_reliable(reference):
    """Measured (64 prompts): accuracy 1.000; gap 17.25 +- 0.47 s.e. (relation), 18.93 +- 0.17 (query); no warnings."""
    _, _, _, exact = reference
    for kind, r in exact.items():
        assert r.reliable and r.reason == "" and r.warnings == [], kind
        rel = r.reliability
        assert rel["accuracy"] > 0.95 and rel["gap"] > 10 * reliability.Z * rel["gap_se"] and rel["n"] == 64
        assert rel["gap"] == pytest.approx(r.clean_value - r.corrupted_value, abs=1e-4)
        back = json.loads(json.dumps(r.to_dict()))
        assert back["reliable"] is True and back["reason"] == "" and back["reliability"]["z"] == 2.0


def test_relation_swap_effect_runs_through_context_and_query_attention(reference):
    """Relation information reaches the query only through attention at the query position.

    Measured (seed 0, default fine-tuning): resid_pre answers 1.000, context 1.000, pairs 0.294 / 0.000 /
    0.296 / 0.318 (the pair attention suppressed carries nothing), subjects 0 and query 0 (same tokens);
    attn_out, head z, the memory's relation vector and its lookup at the query 1.000; context positions 0.
    """
    _, _, _, exact = reference
    r = exact["relation"]
    assert r.clean_value > 2 and r.corrupted_value < -2  # the model recalls; the corruption flips the answer
    assert r["blocks.0.hook_resid_pre", "answers"] > 0.9 and r["blocks.0.hook_resid_pre", "context"] > 0.9
    assert abs(r["blocks.0.hook_resid_pre", "subjects"]) < 1e-6  # same subject tokens in both prompts
    assert abs(r["blocks.0.hook_resid_pre", "query"]) < 1e-6
    pairs = [r["blocks.0.hook_resid_pre", f"pair_{i}"] for i in range(1, 5)]
    assert max(pairs) < 0.6 and sum(pairs) > 0.6  # no single pair carries the relation
    for comp in ("blocks.0.hook_attn_out", "blocks.0.attn.hook_z:h0", "blocks.0.mlp.hook_relation",
                 "blocks.0.mlp.hook_rel_post", "blocks.0.mlp.hook_post", "blocks.0.hook_mlp_out"):
        assert r[comp, "query"] > 0.9
        assert abs(r[comp, "context"]) < 1e-6  # context rows never reach the query's logits in one layer


def test_query_swap_effect_sits_at_the_query(reference):
    """Measured: resid_pre query 1.000, context 0; memory lookup (hook_post) at the query 1.000, relation ~0."""
    _, _, _, exact = reference
    r = exact["query"]
    assert r["blocks.0.hook_resid_pre", "query"] > 0.9
    for role in ("subjects", "answers", "context", "pair_1", "bos"):
        assert abs(r["blocks.0.hook_resid_pre", role]) < 0.05
    assert r["blocks.0.mlp.hook_post", "query"] > 0.9 and r["blocks.0.hook_mlp_out", "query"] > 0.9
    assert abs(r["blocks.0.mlp.hook_relation", "query"]) < 0.05  # same context: same relation


def test_noising_mirrors_denoising(reference):
    model, runs, hooks, _ = reference
    clean, corrupted = runs["relation"]
    noised = P.patch_by_role(model, clean, corrupted, hooks=hooks[:1], roles=["answers", "query"], noising=True)
    assert noised.mode == "noise"
    assert noised["blocks.0.hook_resid_pre", "answers"] < 0.1  # corrupting the answers destroys recall
    assert noised["blocks.0.hook_resid_pre", "query"] == pytest.approx(1.0, abs=1e-6)


def test_attribution_tracks_exact_patching(reference):
    """Attribution patching vs exact patching on the hook x role grid (and by position).

    Measured (seed 0): Pearson r = 0.980 (relation swap), 0.962 (query swap) on the 8 x 9 role grid
    (0.967 / 0.954 on the cells that are not exactly 0); by position 0.977 / 0.949.  Attribution
    underestimates the ReLU memory's effects (resid_pre answers 0.667 vs 1.000, attn_out at the query
    0.652 vs 1.000); what is linear in the logits is exact (mlp_out at the query 1.000 in both).
    """
    model, runs, hooks, exact = reference
    for p in model.parameters():
        p.grad = None  # fine-tuning left its last gradients
    for kind, (clean, corrupted) in runs.items():
        attr = P.attribution_patch(model, clean, corrupted, hooks=hooks)
        assert attr.method == "attribution" and attr.components == exact[kind].components
        assert stats.pearson(attr.values, exact[kind].values) > 0.9
        assert attr["blocks.0.hook_mlp_out", "query"] == pytest.approx(exact[kind]["blocks.0.hook_mlp_out", "query"],
                                                                       abs=1e-3)
        n_pos = clean.tokens.shape[1]
        positions = {f"pos_{j}": torch.arange(n_pos)[None].expand(len(clean), -1) == j for j in range(n_pos)}
        by_pos = P.patch_by_role(model, clean, corrupted, hooks=hooks[:4], roles=positions)
        attr_pos = P.attribution_patch(model, clean, corrupted, hooks=hooks[:4], roles=positions)
        assert stats.pearson(attr_pos.values, by_pos.values) > 0.9
    assert all(p.grad is None for p in model.parameters())  # gradients taken without touching .grad
    assert no_hooks_left(model)


# ------------------------------------------------------------ the package layout and the shared helpers
MOVED = {"fast_path_applies": "query_path_applies", "pearson": "pearson", "role_masks": "masks",  # first-release
         "default_role_hooks": "component_hooks"}  # names, resolved by icr_interp._moved with a warning
PUBLIC = ("LogitDiff", "logit_diff_metric", "Patch", "BaseRun",
          "base_run", "patch_activations", *DROP_INS, "RolePatchResult", "patch_by_role", "patch_pattern_by_role",
          "attribution_patch", "Metric", "Source", "HEAD_HOOKS", "PATTERN_HOOKS",
          "MEMORY_HOOKS", "DEFAULT_MAX_ROWS", "DEFAULT_MAX_LOGITS_BYTES")


def test_every_first_release_name_is_still_exported():
    import importlib

    from icr_interp import _moved

    module = importlib.import_module("icr_interp.analysis.causal.patching")
    assert set(PUBLIC) <= set(module.__all__)
    for name in PUBLIC:
        exec(f"from icr_interp.analysis.causal.patching import {name}", {})
    new = {"fast_path_applies": forward, "pearson": stats, "role_masks": R, "default_role_hooks": H}
    for name, new_name in MOVED.items():
        _moved._warned.discard(f"icr_interp.analysis.causal.patching.{name}")  # each old name warns once per process
        with pytest.deprecated_call(match=f"patching.{name} moved to {new[name].__name__}.{new_name} .*removed in"):
            found = {}
            exec(f"from icr_interp.analysis.causal.patching import {name} as found", {}, found)
        assert found["found"] is getattr(new[name], new_name)  # e.g. one check of when the one-layer path applies
    assert stats.pearson(torch.tensor([1.0, 2.0, 3.0, float("nan")]), torch.tensor([2.0, 4.0, 7.0, 1.0])) == \
        pytest.approx(0.9933, abs=1e-4)


def test_roles_have_one_spelling_in_patching_and_ablation(ic_small):
    """The same role names (plural) give the same positions in both analyses; the singular is deprecated in both."""
    model, clean, corruptions = ic_small
    corrupted = corruptions["relation"]
    n_pos = clean.tokens.shape[1]
    names = ["subjects", "answers", "context", "pair_1", "subject_2", "answer_1", "query", "bos", "all"]
    masks = R.masks(clean.layout, n_pos, names)
    hook = "blocks.0.attn.hook_v"
    by_role = P.patch_by_role(model, clean, corrupted, hooks=[hook], roles=names)
    assert by_role.roles == names
    for name in names:
        assert torch.equal(R.mask(clean, name, n_pos), masks[name])  # a Batch stands for its layout
        ablation.ablate_role_values(model, clean, name, "zero")  # every role is accepted by the ablations too
    for singular, plural in (("subject", "subjects"), ("answer", "answers")):
        with pytest.deprecated_call(match=f"'{singular}' is deprecated since icr_interp 0.2; write '{plural}'"):
            old = P.patch_by_role(model, clean, corrupted, hooks=[hook], roles=[singular])
        assert old.roles == [plural] and torch.equal(old.raw[0], by_role.raw[0, [names.index(plural)]])
        with pytest.warns(DeprecationWarning):
            assert ablation.ablate_role_values(model, clean, singular) == ablation.ablate_role_values(model, clean,
                                                                                                     plural)
    with pytest.raises(ValueError, match="unknown role 'verbs'"):
        P.patch_by_role(model, clean, corrupted, hooks=[hook], roles=["verbs"])
    with pytest.raises(ValueError, match="unknown role 'verbs'"):
        ablation.ablate_role_values(model, clean, "verbs")


def with_token(batch: Batch, row: int, pos: int, value: int) -> Batch:
    tokens = batch.tokens.clone()
    tokens[row, pos] = value
    return Batch(tokens, batch.answers, batch.relations, batch.subjects, batch.query, batch.layout)


@pytest.mark.parametrize("bad", [-1, -7, 10_000])
def test_bad_token_ids_give_one_line(ic_small, bad):
    """A negative or out-of-range id anywhere in a batch: one-line ValueError naming it and the vocabulary size."""
    model, clean, corruptions = ic_small
    corrupted = corruptions["relation"]
    vocab = model.cfg.d_vocab
    broken = with_token(corrupted, 5, 3, bad)
    _, cache = model.run_with_cache(clean.tokens)
    metric = P.logit_diff_metric(clean.answers, corrupted.answers, clean.layout.query_end)
    calls = [lambda: P.patch_by_role(model, clean, broken), lambda: P.patch_by_role(model, broken, corrupted),
             lambda: P.patch_pattern_by_role(model, clean, broken), lambda: P.attribution_patch(model, broken, clean),
             lambda: P.base_run(model, broken.tokens),
             lambda: P.patch_activations(model, broken.tokens, cache, [P.Patch("blocks.0.hook_attn_out",
                                                                               broken.tokens >= 0)], metric)]
    calls += [lambda name=name: getattr(P, name)(model, broken.tokens, cache, metric) for name in DROP_INS]
    for call in calls:
        with pytest.raises(ValueError) as err:
            call()
        message = str(err.value)
        assert "\n" not in message and f"token id {bad}" in message and f"[0, {vocab})" in message, message
    bad_answers = Batch(clean.tokens, clean.answers.clone().fill_(vocab), clean.relations, clean.subjects,
                        clean.query, clean.layout)
    with pytest.raises(ValueError, match=rf"clean answers hold token id {vocab}, outside the vocabulary"):
        P.patch_by_role(model, bad_answers, corrupted)
    assert no_hooks_left(model)


def test_out_of_range_values_carry_warnings(ic_crosstalk):
    """Every normalised cell outside [-0.1, 1.1] is listed (and warned about); an untrained model is at chance."""
    model, clean, corrupted = ic_crosstalk
    with pytest.warns(RuntimeWarning) as caught:
        r = P.patch_by_role(model, clean, corrupted, hooks=["blocks.0.hook_resid_pre"], n_answers=16)
    low, high = reliability.NORMALISED_RANGE
    outside = [(c, role) for i, c in enumerate(r.components) for j, role in enumerate(r.roles)
               if not low <= float(r.values[i, j]) <= high]
    assert len(outside) >= 1 and len(r.warnings) == len(outside)
    assert all(f"{c} x {role} = " in w for (c, role), w in zip(outside, r.warnings))
    assert any("outside (-0.1, 1.1)" in str(w.message) for w in caught)
    # Measured: accuracy 0 on 8 prompts (chance 1/16), and a gap of 0.956 within 2 standard errors (3.56) of zero
    # (2.21 and 3.07 before the random basis was drawn in float32 without the d x d product).
    assert not r.reliable and r.reason.startswith("the model is near chance (accuracy 0.000 on 8 clean prompts")
    assert "the gap 0.956 is within 2 standard errors (3.56) of zero" in r.reason
    assert r.reliability["chance"] == pytest.approx(1 / 16) and r.reliability["z"] == reliability.Z
    assert r.to_dict()["warnings"] == r.warnings


def test_reliability_checks():
    """The one threshold: gap within Z standard errors of 0, or accuracy within Z binomial errors of chance."""
    assert reliability.Z == 2.0
    gaps = torch.tensor([1.0, -1.0, 1.0, 0.5])  # mean 0.375, s.e. 0.47: within 2 s.e. of zero
    r = reliability.assess(gaps, torch.zeros(4), 0.375, 0.0)
    assert not r.reliable and r.gap == pytest.approx(0.375) and r.gap_se == pytest.approx(0.4732, abs=1e-4)
    r = reliability.assess(gaps + 1.0, torch.zeros(4), 1.375, 0.0)  # 1.375 > 2 x 0.473
    assert r.reliable and r.reason == ""
    assert reliability.chance_reason(0.15, 0.1, 100) != ""  # 0.15 <= 0.1 + 2 x 0.03
    assert reliability.chance_reason(0.17, 0.1, 100) == ""
    assert reliability.assess(None, None, 1.0, 1.0).reason.startswith("clean (1) and corrupted (1) runs")
    assert reliability.out_of_range(torch.tensor([-0.1, 1.1, 1.2, -0.5, float("nan")]), list("abcde")) == [
        "c = 1.200 is outside [-0.1, 1.1]", "d = -0.500 is outside [-0.1, 1.1]"]
