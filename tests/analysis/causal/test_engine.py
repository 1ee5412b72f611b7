"""Every recompute strategy of the patching engine equals the general hooked forward (within 1e-5)."""

import pytest
import torch

from icr_interp.analysis.causal import patching as P
from icr_interp.analysis.causal.patching import engine as E
from icr_interp.model import hooks as H

SITES = ("resid_pre", "q", "k", "v", "attn_scores", "pattern", "z", "attn_out", "resid_mid", "mlp_pre", "mlp_post",
         "mlp_out", "resid_post")


def _model(kind: str, n_layers: int = 2):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=n_layers, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=50, act_fn="gelu",
              seed=0)
    if kind == "llama":  # rotary, grouped-query attention, RMSNorm, gated MLP: SmolLM2's architecture in small
        kw.update(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
                  gated_mlp=True, act_fn="silu", final_rms=True)
    elif kind == "gemma3":  # QK norm (hook_k is recorded before it), one KV head, local and global layers
        kw.update(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=1,
                  gated_mlp=True, act_fn="gelu_pytorch_tanh", final_rms=True, use_qk_norm=True,
                  use_normalization_before_and_after=True, use_local_attn=True, window_size=4,
                  attn_types=["local", "global"])
    elif kind == "toy":  # one layer, no normalisation: the one-layer shortcut applies
        kw.update(n_layers=1, normalization_type=None)
    model = HookedTransformer(HookedTransformerConfig(**kw))
    return model.eval()


def _inputs(model, batch: int = 3, n_pos: int = 8):
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(50, (batch, n_pos), generator=g)
    corrupted = clean.clone()
    corrupted[:, 2] = torch.randint(50, (batch,), generator=g)
    corrupted[:, 5] = torch.randint(50, (batch,), generator=g)
    corrupted[0, 0] = (clean[0, 0] + 1) % 50  # one example whose changes start at position 0
    _, cache = model.run_with_cache(clean)
    read = torch.tensor([n_pos - 1, n_pos - 2, n_pos - 1])[:batch]
    return corrupted, cache, P.LogitDiff(torch.arange(batch), torch.arange(batch) + 10, read)


def _patches(model, n_pos: int):
    """One patch per site and layer, at a position mask, a head or a pattern block (several starts)."""
    out = []
    pos = torch.arange(n_pos)
    for layer in range(model.cfg.n_layers):
        for i, site in enumerate(SITES):
            hook = H.hook(layer, site)
            mask = ((pos >= (i % 5)) & (pos <= (i % 5) + 3))[None]
            head = (layer + i) % model.cfg.n_heads if P.core.kind(hook) != "pos" else None
            src = (pos < 4)[None] if P.core.kind(hook) == "pattern" else None
            out.append(P.Patch(hook, mask, head=head, src=src))
    return out


def _all_positions(logits):  # a metric that reads every position (declares none)
    return logits[..., :7].mean()


@pytest.mark.parametrize("kind", ["gpt", "llama", "gemma3", "toy"])
@pytest.mark.parametrize("metric_name", ["read_positions", "all_positions"])
def test_every_strategy_equals_the_general_forward(kind, metric_name):
    model = _model(kind)
    corrupted, cache, logit_diff = _inputs(model)
    metric = logit_diff if metric_name == "read_positions" else _all_positions
    patches = _patches(model, corrupted.shape[1])
    general = P.patch_activations(model, corrupted, cache, patches, metric, strategy="general")
    assert general.std() > 1e-3  # the patches move the metric
    for strategy in ("fast", "suffix") if kind == "toy" else ("suffix",):  # auto takes the first that applies
        ours = P.patch_activations(model, corrupted, cache, patches, metric, strategy=strategy, max_rows=40)
        torch.testing.assert_close(ours, general, atol=1e-5, rtol=0)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_the_cheapest_strategy_is_chosen():
    deep, toy = _model("llama"), _model("toy")
    assert E.strategy_for(deep, H.hook(1, "z")) == "suffix"
    assert E.strategy_for(deep, "blocks.0.attn.hook_rot_k") == "general"  # its position axis includes the past
    assert E.strategy_for(deep, "hook_embed") == "general"
    assert E.strategy_for(toy, H.hook(0, "z")) == "fast"
    assert E.strategy_for(toy, H.hook(0, "z"), ("suffix", "general")) == "suffix"
    with pytest.raises(ValueError, match="strategy must be one of"):
        P.patch_activations(toy, torch.zeros(1, 3, dtype=torch.long), {}, [], lambda x: x.sum(), strategy="magic")


def test_a_bridge_takes_the_general_strategy_and_the_result_says_so(monkeypatch):
    """On TransformerLens 4.x's TransformerBridge only hooks reach inside blocks: every patch is a general forward,
    with the same values, and the role-patching result states the fallback (here the bridge is simulated)."""
    from icr_interp.analysis.causal.patching import by_role
    from icr_interp.pipeline.config import RunConfig
    from icr_interp.pipeline.runner import build

    task, model = build(RunConfig.from_preset("tiny", seed=4))
    clean, corrupted, _ = task.corrupt_pairs(task.sample(32, seed=0), "relation", seed=1)
    hooks = [H.hook(0, "resid_pre"), H.hook(0, "z")]
    plain = P.patch_by_role(model, clean, corrupted, hooks=hooks)
    assert plain.strategies == {"fast": 2} and plain.note == ""
    monkeypatch.setattr(E, "is_bridge", lambda m: True)
    monkeypatch.setattr(by_role, "is_bridge", lambda m: True)
    assert {E.strategy_for(model, h) for h in hooks} == {"general"}
    bridged = P.patch_by_role(model, clean, corrupted, hooks=hooks)
    assert bridged.strategies == {"general": 2} and bridged.note == E.BRIDGE_FALLBACK
    assert "note: TransformerBridge" in str(bridged) and bridged.to_dict()["note"] == E.BRIDGE_FALLBACK
    torch.testing.assert_close(bridged.values, plain.values, atol=1e-5, rtol=0)
