"""AtP* screen + exact confirmation, and the recompute floor."""

import warnings

import pytest
import torch

from icr_interp.analysis.causal import patching as P
from icr_interp.analysis.causal.patching.screen import screen_and_confirm, spearman
from icr_interp.model import hooks as H
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask


def _model(kind: str, d_vocab: int, **kw):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=d_vocab, act_fn="gelu", seed=0)
    if kind == "llama":
        cfg.update(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
                   gated_mlp=True, act_fn="silu", final_rms=True)
    cfg.update(kw)
    return HookedTransformer(HookedTransformerConfig(**cfg)).eval()


@pytest.fixture(scope="module")
def pairs():
    task = ICRecallTask(KnowledgeBase.random(16, 4, 16, 1.0, seed=0), n_pairs=3)
    clean, corrupted, _ = task.corrupt_pairs(task.sample(8, seed=0), "relation", seed=2)
    d_vocab = int(max(clean.tokens.max(), clean.answers.max(), corrupted.answers.max())) + 1
    return clean, corrupted, d_vocab


def test_qk_fix_is_exact_where_the_metric_is_linear_in_the_pattern(pairs):
    """One attention-only layer without normalisation: logits are linear in the pattern, so AtP* on queries and
    keys equals exact patching (plain attribution, linear through the softmax, does not)."""
    clean, corrupted, d_vocab = pairs
    model = _model("gpt", d_vocab, n_layers=1, attn_only=True, normalization_type=None)
    with torch.no_grad():
        for p in (model.blocks[0].attn.W_Q, model.blocks[0].attn.W_K):
            p.mul_(6)  # a sharp softmax, far from linear
    hooks = [H.hook(0, "q"), H.hook(0, "k")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sc = screen_and_confirm(model, clean, corrupted, hooks=hooks, k=5, exact_all=True)
        plain = P.attribution_patch(model, clean, corrupted, hooks=hooks)
    torch.testing.assert_close(sc.estimate.raw, sc.exact.raw, atol=1e-4, rtol=1e-4)
    effect = (sc.exact.raw - sc.exact.corrupted_value).abs().max()
    assert effect > 1e-3 and (plain.raw - sc.exact.raw).abs().max() > 0.2 * effect  # the fix matters here
    assert sc.recall == 1.0 and sc.rank_correlation > 0.99 and sc.n_exact == sc.estimate.raw.numel()


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_confirmed_cells_are_exact_patches(pairs, kind):
    clean, corrupted, d_vocab = pairs
    model = _model(kind, d_vocab)
    hooks = [H.hook(1, "k"), H.hook(0, "z"), H.hook(1, "resid_pre")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sc = screen_and_confirm(model, clean, corrupted, hooks=hooks, roles=["subjects", "answers", "query"], k=3)
        ref = P.patch_by_role(model, clean, corrupted, hooks=hooks, roles=["subjects", "answers", "query"],
                              strategy="general")
    assert len(sc.confirmed) == 6 and len(sc.audited) == 3 and sc.n_exact == 9
    for comp, role in sc.confirmed + sc.audited:
        assert sc.exact[comp, role] == pytest.approx(ref[comp, role], abs=1e-5)
    assert 0.0 <= sc.recall <= 1.0 and "recall of the exact top-3" in str(sc)
    assert sc.exact.values.isnan().sum() == sc.exact.values.numel() - 9
    assert sum(c.endswith("hook_k:h2") for c in sc.estimate.components) == (0 if kind == "llama" else 1)  # GQA


def test_spearman():
    assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 20.0, 30.0, 45.0])) == pytest.approx(1.0)
    assert spearman(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)


def test_floor_counts_the_recomputed_token_blocks():
    model = _model("gpt", 50, n_layers=3)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(50, (2, 6), generator=g)
    corrupted = clean.clone()
    corrupted[:, 3] = (clean[:, 3] + 1) % 50
    _, cache = model.run_with_cache(clean)
    pos = torch.arange(6)[None]
    metric = P.LogitDiff(torch.tensor([1, 2]), torch.tensor([3, 4]), torch.tensor([5, 4]))
    patches = [P.Patch(H.hook(1, "resid_pre"), pos >= 0),  # changes at 3: layers 1-2, positions 3..read
               P.Patch(H.hook(2, "resid_pre"), pos == 1),  # position 1 is the same in both runs: nothing
               P.Patch(H.hook(0, "z"), pos == 3, head=0)]  # layers 0-2 at positions 3..read
    fl = P.recompute_floor(model, corrupted, cache, patches, metric, per_token_block=1e-6)
    # read positions 5 and 4: resid_pre L1 -> 2 blocks x (3 + 2) rows; z L0 -> 3 blocks x (3 + 2) rows
    assert fl.token_blocks == 2 * 5 + 3 * 5 and fl.n_samples == 4
    assert fl.seconds == pytest.approx(25e-6) and "token-blocks" in str(fl)
    full = P.recompute_floor(model, corrupted, cache, patches, lambda lg: lg.sum())  # reads every position
    assert full.token_blocks == 2 * 3 * 2 + 3 * 3 * 2 and full.seconds_per_token_block > 0
