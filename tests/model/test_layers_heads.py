"""Two layers and two heads: the build refuses what it does not support, and what it builds fine-tunes.

The constructed model reads the *mean* of all its query rows (each head of each
layer writes ``1 / (n_heads n_layers)`` of the copy; docs/theory.md §11).
The old sum of two layers' copies doubled every context weight, woke every
stage-II neuron and left a zero gradient; that failure is pinned here too.
"""

import pytest
import torch
import torch.nn.functional as F

import icr_interp as ii
from icr_interp.analysis.scoring.combined_rows import combine_rows, ov_shares
from icr_interp.model.builder import MAX_LAYERS, ModelConfig, resolve_config
from icr_interp.analysis.scoring.templates import score_rows, score_templates

SMALL = dict(n_subjects=16, n_relations=4, k=3)  # d_model 128: a 2-layer fine-tune takes seconds
STEPS, N_SAMPLES = 80, 512  # measured: 2 layers 0.48-0.74 -> 0.96-0.99 on seeds 1-5 (layers_heads_results.md)


def small_task(seed: int) -> ii.ICRecallTask:
    kb = ii.KnowledgeBase.random(SMALL["n_subjects"], SMALL["n_relations"], SMALL["n_subjects"], seed=seed)
    return ii.ICRecallTask(kb, n_pairs=SMALL["k"])


def test_unsupported_depth_is_refused_at_build_time(shared_task):
    with pytest.raises(ValueError, match=f"n_layers=3 is not supported.*1 to {MAX_LAYERS} layers") as err:
        ii.build_model(shared_task, n_layers=MAX_LAYERS + 1)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="n_layers=3 is not supported"):
        resolve_config(shared_task, ModelConfig(n_layers=3))
    with pytest.raises(ValueError, match="n_layers=4 is not supported"):
        ii.RunConfig(model=ModelConfig(n_layers=4))


@pytest.mark.parametrize("n_layers, n_heads", [(1, 2), (2, 1), (2, 2)])
def test_every_query_row_writes_an_equal_share_of_the_copy(shared_task, n_layers, n_heads):
    model = ii.build_model(shared_task, n_layers=n_layers, n_heads=n_heads)
    one = ii.build_model(shared_task)
    expected = one.W_V[0, 0] @ one.W_O[0, 0] / (n_layers * n_heads)
    for layer in range(n_layers):
        for head in range(n_heads):
            torch.testing.assert_close(model.W_V[layer, head] @ model.W_O[layer, head], expected)


def _start_gradient(model, task) -> float:
    batch = task.sample(128, seed=5)
    rows = torch.arange(len(batch))
    names = [n for n, _ in model.named_parameters() if n.endswith(("W_Q", "W_K"))]
    params = dict(model.named_parameters())
    loss = F.cross_entropy(model(batch.tokens)[rows, batch.layout.query_end], batch.answers)
    return float(torch.cat([g.flatten() for g in torch.autograd.grad(loss, [params[n] for n in names])]).norm())


def test_summed_layers_saturate_the_memory_and_the_mean_does_not():
    """The cause of the stuck 2-layer runs: with the sum of two copies every stage-II neuron fires, gradient ~0."""
    task = small_task(seed=2)
    mean = ii.build_model(task, n_layers=2, seed=2)
    summed = ii.build_model(task, n_layers=2, seed=2)
    with torch.no_grad():
        for block in summed.blocks:
            block.attn.W_V.mul_(2)  # what the build wrote before: each layer the full 2k copy
    assert _start_gradient(summed, task) < 1e-4 < 1e-2 < _start_gradient(mean, task)


@pytest.mark.parametrize("n_layers, n_heads, seeds", [(2, 1, (2, 3)), (1, 2, (2, 3)), (2, 2, (3,))])
def test_layers_and_heads_fine_tune_from_a_start_below_target(n_layers, n_heads, seeds):
    torch.set_num_threads(1)
    for seed in seeds:
        task = small_task(seed)
        model = ii.build_model(task, n_layers=n_layers, n_heads=n_heads, seed=seed)
        start = ii.evaluate(model, task, n_prompts=512, seed=seed)["accuracy"]
        ii.finetune(model, task, steps=STEPS, n_samples=N_SAMPLES, seed=seed, progress=False)
        final = ii.evaluate(model, task, n_prompts=512, seed=seed)["accuracy"]
        assert start < 0.95 <= final, (n_layers, n_heads, seed, start, final)


def test_combined_row_of_a_one_head_layer_is_that_head(shared_task):
    model = ii.build_model(shared_task, n_layers=2, n_heads=1)
    batch = shared_task.sample(64, seed=3)
    s = score_templates(model, batch).to_dict()
    for layer, combined in enumerate(s["combined"]):
        head = s["per_head"][layer]
        assert combined["head_shares"] == [1.0]
        for key in ("pairwise", "pairwise_null", "p_value", "balance", "pair_mass", "best", "tv", "beta"):
            assert combined[key] == head[key] and combined["mean_row"][key] == head["mean_row"][key]


def test_combined_row_weights_heads_by_their_ov_share(shared_task):
    """Two heads, one on subjects and one on answers: neither is balanced, their equal-share mean is."""
    model = ii.build_model(shared_task, n_heads=2)
    torch.testing.assert_close(ov_shares(model), torch.full((1, 2), 0.5))
    batch = shared_task.sample(32, seed=4)
    lay, k = batch.layout, shared_task.n_pairs
    rows = torch.zeros(1, 2, len(batch), batch.tokens.shape[1])
    ex = torch.arange(len(batch))[:, None]
    rows[0, 0][ex, lay.subject_end] = 1 / k
    rows[0, 1][ex, lay.answer_end] = 1 / k
    s = score_rows(rows, lay, head_shares=ov_shares(model))
    assert s.balance.max() == 0 and float(s.combined.balance[0, 0]) == pytest.approx(1.0)
    torch.testing.assert_close(combine_rows(rows, torch.tensor([[0.5, 0.5]])), rows.mean(1))
    lopsided = score_rows(rows, lay, head_shares=torch.tensor([[3.0, 1.0]]))
    assert float(lopsided.combined.balance[0, 0]) == pytest.approx(2 * 0.25 / 1.0)


def _run_case_study(script: str, tmp_path, *args) -> dict:
    import json

    import _scripts

    done = _scripts.run_main("case_studies", script, "--shapes", "16x4x3", "--seeds", "2", "--steps", "5",
                             "--n-samples", "64", "--n-eval", "64", "--n-template", "32", "--out", tmp_path / "out",
                             "--models", tmp_path / "models", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads((tmp_path / "out" / script.replace(".py", ".json")).read_text())


def test_heads_and_layers_case_studies_run_and_reuse(tmp_path):
    heads = _run_case_study("heads.py", tmp_path)
    row = heads["rows"][0]
    assert row["n_heads"] == 2 and len(row["heads"]) == 2 and len(row["combined"]) == 1 and not row["reused"]
    assert {"pairwise", "pairwise_null"} <= set(row["combined"][0]) and 0 <= row["start_accuracy"] <= 1
    layers = _run_case_study("layers.py", tmp_path, "--n-patch", "32")["rows"][0]
    assert layers["n_layers"] == 2 and set(layers["jobs"]) >= {"relation", "lookup", "components"}
    stage_ii = layers["jobs"]["components"].index("blocks.1.hook_mlp_out @query")
    assert layers["jobs"]["lookup"][stage_ii] == pytest.approx(1.0, abs=1e-4)  # all of the lookup runs through it
    again = _run_case_study("heads.py", tmp_path, "--reuse")["rows"][0]
    assert again["reused"] and again["accuracy"] == row["accuracy"]


def test_split_verdict():
    from icr_interp.analysis.causal.job_split import split_verdict

    t = torch.tensor
    assert split_verdict(t([0.9, 0.85]), t([0.5, 0.5]), 0.9) == "per head"
    assert split_verdict(t([0.1, 0.1]), t([0.95, 0.05]), 0.79) == "split across heads"  # one-sided, complementary
    assert split_verdict(t([0.1, 0.1]), t([0.95, 0.9]), 0.1) == "mixed"  # both on subjects
    assert split_verdict(t([0.4, 0.4]), t([0.65, 0.35]), 0.87) == "mixed"  # leaning, not one-sided


@pytest.mark.parametrize("biases", [False, True])
@pytest.mark.parametrize("n_layers, n_heads", [(2, 1), (2, 2), (1, 2)])
def test_the_query_only_forward_equals_the_full_forward_at_any_depth(n_layers, n_heads, biases):
    """Training's forward runs the first layer from token tables and the last one at the query only: the same
    logits as the full forward (within 1e-5) and the same gradients of the trained weights.  With every bias
    of the attention perturbed too (the built ones are zero) the scale grows, hence 1e-4 there: a bias counted
    twice would be off by far more."""
    from icr_interp.model.forward import _first_block_from_tables, last_layer_path_applies
    from icr_interp.training.trainer import batch_logits

    task = small_task(1)
    model = ii.build_model(task, n_layers=n_layers, n_heads=n_heads, seed=1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # away from the start, so that the comparison is not at a special point
        for block in model.blocks:
            a = block.attn
            for w in (a.W_Q, a.W_K, *((a.b_Q, a.b_K, a.b_V, a.b_O) if biases else ())):
                w.add_(0.05 * torch.randn(w.shape, generator=gen))
    assert last_layer_path_applies(model)
    batch = task.sample(48, seed=5)
    assert _first_block_from_tables(model, batch.tokens) == (n_layers == 2)  # the first block from token tables
    grads = []
    for fast in (True, False):
        logits = batch_logits(model, batch, fast=fast)
        loss = F.cross_entropy(logits, batch.answers)
        params = [p for n, p in model.named_parameters() if n.split(".")[-1] in ("W_Q", "W_K")]
        grads.append((logits.detach(), torch.autograd.grad(loss, params)))
    (fast_logits, fast_grads), (full_logits, full_grads) = grads
    tol = 1e-4 if biases else 1e-5
    torch.testing.assert_close(fast_logits, full_logits, atol=tol, rtol=tol)
    for a, b in zip(fast_grads, full_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-3)


def test_the_kept_value_table_follows_a_changed_weight():
    """The first block's value table is kept while its weights are frozen, and rebuilt when one changes."""
    from icr_interp.training.trainer import batch_logits

    task = small_task(2)
    model = ii.build_model(task, n_layers=2, seed=2)
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[-1] in ("W_Q", "W_K"))  # as fine-tuning leaves them
    batch = task.sample(48, seed=6)
    with torch.no_grad():
        first = batch_logits(model, batch)
        assert getattr(model, "_icr_value_table", None) is not None  # kept
        model.blocks[0].attn.W_V.mul_(1.5)  # an in-place change: its version counter moves
        torch.testing.assert_close(batch_logits(model, batch), batch_logits(model, batch, fast=False),
                                   atol=1e-5, rtol=1e-5)
        assert not torch.allclose(first, batch_logits(model, batch))
