"""pairing_verdict's positive controls: a fine-tuned 1-layer toy pairs in a head, a hand-built 2-layer model whose
pattern splits across layers pairs by composition, a fine-tuned 2-layer toy pairs in its heads (the knockouts
say both layers' prediction rows are used), and random or untrained models pair nowhere."""

import pytest
import torch

import icr_interp as ii
from icr_interp.analysis.scoring.composed_pairing import effective_rows
from icr_interp.analysis.scoring.pairing_test import PAIRING_MIN_MASS
from icr_interp.analysis.causal.pairing_verdict import VERDICTS, pairing_verdict
from icr_interp.tl.compat import HookedTransformer, HookedTransformerConfig

STEPS, N_SAMPLES = 80, 512  # the 2-layer fine-tune of tests/model/test_layers_heads.py: seconds


@pytest.fixture(scope="module")
def task():
    return ii.ICRecallTask(ii.KnowledgeBase.random(16, 4, 16, seed=2), n_pairs=3)


def fine_tuned(task, n_layers: int):
    model = ii.build_model(task, n_layers=n_layers, seed=2)
    ii.finetune(model, task, steps=STEPS, n_samples=N_SAMPLES, seed=2, progress=False)
    return model


def composition_toy(task, seed: int = 0) -> HookedTransformer:
    """Attention-only, two layers, one head each, one-hot tokens and positions.  Layer 0: every position reads
    the previous token (so a_i reads s_i), the prediction position reads BOS.  Layer 1: the prediction position
    reads the answers, weighted by a random score of each answer token.  No head's prediction row is pairwise;
    the rollout puts equal mass on s_i and a_i with content-driven weights across pairs."""
    lay = task.layout(1)
    n_vocab, n_ctx = task.vocab.size, task.n_ctx
    pred, answers = int(lay.pred_pos[0]), lay.answer_end[0]
    cfg = HookedTransformerConfig(n_layers=2, d_model=n_vocab + n_ctx, n_heads=1, d_head=n_ctx, n_ctx=n_ctx,
                                  d_vocab=n_vocab, attn_only=True, normalization_type=None, act_fn="relu", seed=0)
    model = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[:, :n_vocab] = torch.eye(n_vocab)
        model.pos_embed.W_pos[:, n_vocab:] = torch.eye(n_ctx)
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn
        for p in range(1, n_ctx):
            a0.W_Q[0, n_vocab + p, p] = 20.0  # position p asks for position p - 1 ...
            a0.W_K[0, n_vocab + p - 1, p] = 1.0
        a0.W_Q[0, n_vocab + pred, :] = 0.0
        a0.W_Q[0, n_vocab + pred, 0] = 40.0  # ... except the prediction position, which reads BOS
        a0.W_K[0, n_vocab + 0, 0] = 1.0
        a1.W_Q[0, n_vocab + pred, 0] = 1.0
        a1.W_K[0, n_vocab + answers, 0] = 20.0  # the prediction reads the answers ...
        a1.W_K[0, :n_vocab, 0] = 4 * torch.rand(n_vocab, generator=gen)  # ... by a content score of each token
        a0.W_V[0] = a1.W_V[0] = torch.eye(cfg.d_model, n_ctx)  # equal OV shares (one head per layer anyway)
    return model.eval()


def test_one_layer_fine_tuned_toy_pairs_in_a_head(task):
    v = pairing_verdict(fine_tuned(task, 1), task, n_prompts=64, seeds=(0, 1))
    assert v.verdict == "pairwise in a head" and v.pairwise_heads == [[0, 0]], str(v)
    top = v.evidence["top_head"]
    assert top["effect_mass_ci"][0] >= PAIRING_MIN_MASS and top["adjacency"]["p_value"] <= 0.01
    # Blocking the prediction's reads of the answers costs most of the accuracy (95% interval below 0).
    knock = v.evidence["knockout_all_layers"]["prediction -> answers"]
    assert knock["logit_diff_ci"][1] < -1.0 and knock["accuracy_change"] < -0.3
    assert v.evidence["knockout_all_layers"]["answer -> own_subject"]["logit_diff_change"] == 0.0  # one layer
    assert all(s["p_value"] <= 0.01 for s in v.evidence["top_head_per_seed"])
    assert v.evidence["token_distances"] == dict(true_pairs=1.0, pseudo_pairs=1.0)  # the control is matched
    assert v.evidence["robustness"]["top_head_interval_clears_floor"]
    assert v.evidence["robustness"]["top_head_seeds_passing"] == 2


def test_hand_built_two_layer_split_pairs_by_composition(task):
    model = composition_toy(task)
    batch = task.sample(8, seed=0)
    rows = effective_rows(model, batch)[-1]
    lay = batch.layout
    b = torch.arange(8)[:, None]
    torch.testing.assert_close(rows[b, lay.subject_end], rows[b, lay.answer_end], atol=5e-3, rtol=0)  # s_i = a_i
    v = pairing_verdict(model, task, n_prompts=64, seeds=(0, 1), binding=False)
    assert v.verdict == "pairwise by composition" and v.pairwise_heads == [], str(v)
    comp = v.evidence["composed"]
    assert comp["full_depth"]["effect_mass_ci"][0] >= PAIRING_MIN_MASS and not comp["per_depth"][0]["shown"]
    assert comp["full_depth"]["position"]["p_value"] <= 0.01  # content-driven weights: own prompt's pairs


def test_two_layer_fine_tuned_toy_pairs_in_its_heads_and_uses_both_layers(task):
    v = pairing_verdict(fine_tuned(task, 2), task, n_prompts=64, seeds=(0, 1))
    assert v.verdict == "pairwise in a head" and [1, 0] in v.pairwise_heads, str(v)
    profile = v.evidence["knockout_profile"]
    for group in ("prediction -> answers", "prediction -> subjects"):
        assert profile[group][1]["logit_diff_ci"][1] < 0  # the last layer's reads are used
    assert v.evidence["binding"]["n_informative"] > 0


@pytest.mark.parametrize("n_layers", [1, 2])
def test_random_and_untrained_models_pair_nowhere(task, n_layers):
    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=32, n_heads=2, d_head=16, n_ctx=task.n_ctx,
                                  d_vocab=task.vocab.size, d_mlp=64, act_fn="gelu", normalization_type="LN",
                                  seed=n_layers)
    v = pairing_verdict(HookedTransformer(cfg), task, n_prompts=64, seeds=(0, 1))
    assert v.verdict == "neither" and v.pairwise_heads == [], str(v)
    assert v.evidence["composed"]["full_depth"]["effect_mass"] < PAIRING_MIN_MASS
    if n_layers == 1:
        start = pairing_verdict(ii.build_model(task, seed=2), task, n_prompts=64, seeds=(0,), binding=False)
        assert start.verdict == "neither", str(start)
    assert v.verdict in VERDICTS and "neither" in str(v)


def test_bad_arguments_are_one_line(task):
    with pytest.raises(ValueError, match="at least one seed"):
        pairing_verdict(ii.build_model(task), task, seeds=())
