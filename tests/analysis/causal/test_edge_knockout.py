"""Attention-edge knockout, binding interchange and the composed row: masks per example, the hooks against a
hand computation, and the text-prompt path (multi-token spans) on a tiny Llama with SmolLM2's tokenizer."""

import warnings

import pytest
import torch

import icr_interp as ii
from icr_interp.analysis.causal.binding import binding_interchange, swap_pairs
from icr_interp.analysis.scoring.combined_rows import ov_shares
from icr_interp.analysis.scoring.composed_pairing import composed_pairing, effective_rows
from icr_interp.analysis.causal.edge_knockout import GROUPS, edge_knockout, edge_mask, knockout_profile, prediction_margin
from icr_interp.tl.compat import HookedTransformer, HookedTransformerConfig


@pytest.fixture(scope="module")
def toy():
    task = ii.ICRecallTask(ii.KnowledgeBase.random(16, 4, 16, seed=2), n_pairs=3)
    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=2, d_head=16, n_ctx=task.n_ctx,
                                  d_vocab=task.vocab.size, d_mlp=64, act_fn="gelu", normalization_type="LN", seed=3)
    return HookedTransformer(cfg).eval(), task, task.sample(16, seed=0)


def test_masks_follow_the_layout(toy):
    _, task, batch = toy
    n = batch.tokens.shape[1]  # [BOS s1 a1 s2 a2 s3 a3 sq]: pred = 7, subjects 1 3 5, answers 2 4 6
    m = edge_mask(batch.layout, "prediction", "answers", n)[0]
    assert m.nonzero().tolist() == [[7, 2], [7, 4], [7, 6]]
    assert edge_mask(batch.layout, "prediction", "subjects", n)[0].nonzero().tolist() == [[7, 1], [7, 3], [7, 5]]
    assert not edge_mask(batch.layout, "prediction", "query", n).any()  # the query is the prediction position
    assert edge_mask(batch.layout, "answer", "own_subject", n)[0].nonzero().tolist() == [[2, 1], [4, 3], [6, 5]]
    assert edge_mask(batch.layout, "answer", "other_subjects", n)[0].nonzero().tolist() == [[4, 1], [6, 1], [6, 3]]
    with pytest.raises(ValueError, match="unknown edge group"):
        edge_mask(batch.layout, "answer", "answers", n)


def test_knockout_equals_the_renormalised_pattern(toy):
    model, _, batch = toy
    mask = edge_mask(batch.layout, "prediction", "answers", batch.tokens.shape[1])

    def renormalise(pattern, hook):  # the same edges zeroed in the pattern, rows renormalised by hand
        kept = pattern * ~mask[:, None]
        return kept / kept.sum(-1, keepdim=True)

    by_hand = prediction_margin(model, batch, [("blocks.1.attn.hook_pattern", renormalise)])
    r = edge_knockout(model, batch, "prediction", "answers", [1])
    clean = prediction_margin(model, batch)
    assert r.logit_diff_change == pytest.approx(float((by_hand - clean).mean()), abs=1e-4)
    assert r.logit_diff_ci[0] <= r.logit_diff_change <= r.logit_diff_ci[1] and r.edges_per_prompt == 3.0
    assert r.n_prompts == 16 and r.layers == (1,)
    with pytest.raises(ValueError, match="layers must be"):
        edge_knockout(model, batch, "prediction", "answers", [2])


def test_profile_slides_a_window(toy):
    model, _, batch = toy
    prof = knockout_profile(model, batch, window=1)
    assert set(prof) == {f"{s} -> {t}" for s, t in GROUPS}
    assert [r.layers for r in prof["prediction -> answers"]] == [(0,), (1,)]
    assert all(r.logit_diff_change == 0.0 for r in prof["prediction -> query"])  # nothing to block in toy prompts
    whole = knockout_profile(model, batch, window=2)["answer -> own_subject"]
    assert len(whole) == 1 and whole[0].layers == (0, 1)


def test_binding_swap_at_the_embedding_is_the_token_swap(toy):
    model, task, batch = toy
    pairs = swap_pairs(batch, seed=0)
    assert (pairs[:, 0] != pairs[:, 1]).all()
    tokens = batch.tokens.clone()
    rows = torch.arange(len(batch))
    pi, pj = batch.layout.answer_end[rows, pairs[:, 0]], batch.layout.answer_end[rows, pairs[:, 1]]
    tokens[rows, pi], tokens[rows, pj] = batch.tokens[rows, pj], batch.tokens[rows, pi]
    swapped = ii.Batch(tokens=tokens, answers=batch.answers, relations=batch.relations, subjects=batch.subjects,
                       query=batch.query, layout=batch.layout)
    curve = binding_interchange(model, batch, seed=0)
    expected = float((prediction_margin(model, swapped) - prediction_margin(model, batch)).mean())
    assert curve.token_swap_change == pytest.approx(expected, abs=1e-4)
    assert curve.layers == (0, 1) and len(curve.follows_bound) == 2


def test_effective_row_of_one_layer_is_half_the_residual_half_the_combined_row():
    task = ii.ICRecallTask(ii.KnowledgeBase.random(16, 4, 16, seed=2), n_pairs=3)
    model = ii.build_model(task, n_heads=2)
    batch = task.sample(8, seed=1)
    rows = effective_rows(model, batch)
    _, cache = model.run_with_cache(batch.tokens)
    pattern = cache["blocks.0.attn.hook_pattern"][torch.arange(8), :, batch.layout.pred_pos]  # [batch head pos]
    shares = ov_shares(model)[0]
    expected = 0.5 * torch.einsum("bhp,h->bp", pattern, shares)
    expected[torch.arange(8), batch.layout.pred_pos] += 0.5
    torch.testing.assert_close(rows[0], expected, atol=1e-5, rtol=0)
    assert torch.allclose(rows.sum(-1), torch.ones(1, 8), atol=1e-5)
    assert composed_pairing(model, batch).pair_mass.shape == (1,)
    # Without the sink (BOS here): the BOS column is gone and the rest of the combined row is renormalised.
    dropped = effective_rows(model, batch, drop_sink=True)[0]
    combined = torch.einsum("bhp,h->bp", pattern, shares)
    combined[:, 0] = 0
    expected = 0.5 * combined / combined.sum(-1, keepdim=True)
    expected[torch.arange(8), batch.layout.pred_pos] += 0.5
    torch.testing.assert_close(dropped, expected, atol=1e-5, rtol=0)


def test_text_prompts_with_multi_token_spans(tiny_smol_llama):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        task = ii.TextICRecallTask(ii.KnowledgeBase.builtin("countries"), tiny_smol_llama.tokenizer, n_pairs=3)
    batch = task.sample(8, seed=0)
    n = batch.tokens.shape[1]
    lay = batch.layout
    own = edge_mask(lay, "answer", "own_subject", n)
    spans = lay.span_masks(n)
    for b in range(8):  # every token of a_i's span blocked from every token of s_i's span, nothing else
        expected = torch.einsum("kd,ks->ds", spans.answer[b].float(), spans.subject[b].float()) > 0
        assert torch.equal(own[b], expected)
    assert edge_mask(lay, "prediction", "query", n).sum() == (spans.query & ~spans.prediction).sum()
    r = edge_knockout(tiny_smol_llama, batch, "prediction", "subjects", [0, 1])
    assert r.edges_per_prompt == pytest.approx(float(spans.subject.any(1).sum(-1).float().mean()))
    curve = binding_interchange(tiny_smol_llama, batch)
    assert len(curve.follows_bound) == 2 and curve.n_prompts == 8
