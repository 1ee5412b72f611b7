"""Function-vector heads and per-head patching on the engine's suffix strategy: equal to hooked forwards."""

import importlib
import sys
from dataclasses import replace

import pytest
import torch

from icr_interp import _moved, build_model
from icr_interp.analysis.causal import patching as P
from icr_interp.analysis.causal.function_vectors import FunctionVectorResult, function_vector_heads, mean_head_outputs
from icr_interp.analysis.causal.patching.metrics import LogitDiff
from icr_interp.model import hooks as H
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask


def _stock(kind: str, n_layers: int = 3, d_vocab: int = 64, attn_only: bool = False):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    kw = dict(n_layers=n_layers, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=32, d_vocab=d_vocab, act_fn="gelu",
              seed=0, attn_only=attn_only)
    if kind == "llama":  # rotary, grouped-query attention, RMSNorm, gated MLP: SmolLM2's architecture in small
        kw.update(normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
                  gated_mlp=True, act_fn="silu", final_rms=True)
    model = HookedTransformer(HookedTransformerConfig(**kw))
    model.eval()
    return model


def _no_hooks_left(model) -> bool:
    return all(not hp.fwd_hooks and not hp.bwd_hooks for hp in model.hook_dict.values())


@pytest.fixture(scope="module")
def toy():
    """A toy IC-recall task (k = 3), its clean prompts and their context answers shuffled across the pairs."""
    task = ICRecallTask(KnowledgeBase.random(16, 4, 16, 1.0, seed=0), n_pairs=3)
    clean = task.sample(12, seed=0)
    g = torch.Generator().manual_seed(1)
    tokens = clean.tokens.clone()
    rows = torch.arange(len(clean))[:, None]
    perm = torch.stack([torch.roll(torch.arange(3), 1 + int(torch.randint(2, (1,), generator=g))) for _ in clean.answers])
    tokens[rows, clean.layout.answer_end] = clean.tokens[rows, clean.layout.answer_end[rows, perm]]
    return task, clean, replace(clean, tokens=tokens)


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_dropin_equals_transformer_lens(kind):
    import transformer_lens.patching as TLP

    model = _stock(kind)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(64, (3, 9), generator=g)
    corrupted = clean.clone()
    corrupted[:, 3], corrupted[:, 6] = torch.randint(64, (3,), generator=g), torch.randint(64, (3,), generator=g)
    _, cache = model.run_with_cache(clean)
    metric = LogitDiff(torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), torch.tensor([8, 7, 8]))
    ref = TLP.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric)
    ours = P.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric, max_rows=40)  # chunks split cells
    assert ref.abs().max() > 0.05
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(ours[:, :3], torch.full_like(ours[:, :3], float(metric(model(corrupted).detach()))))  # unchanged prefix
    full = P.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, lambda lg: metric(lg))  # declares nothing
    torch.testing.assert_close(full, ref, atol=1e-5, rtol=1e-5)  # every row recomputed and unembedded
    some = P.get_act_patch_attn_head_out_by_pos(model, corrupted, cache, metric, layers=[1])
    torch.testing.assert_close(some[1], ref[1], atol=1e-5, rtol=1e-5)
    assert some[0].isnan().all() and _no_hooks_left(model)


def _hooked_effect(model, clean, shuffled, layer, head) -> torch.Tensor:
    """P(target) with one head's prediction-row z set to its clean mean: one hooked forward (the definition)."""
    mean = mean_head_outputs(model, clean)[layer, head]
    rows = torch.arange(len(shuffled))
    pred = shuffled.layout.pred_pos

    def hook(z, hook):
        z = z.clone()
        z[rows, pred, head] = mean
        return z
    with torch.no_grad():
        base = model(shuffled.tokens)[rows, pred].softmax(-1)[rows, shuffled.answers]
        logits = model.run_with_hooks(shuffled.tokens, fwd_hooks=[(H.hook(layer, "z"), hook)])
    return (logits[rows, pred].softmax(-1)[rows, shuffled.answers] - base).mean()


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_indirect_effect_is_the_hooked_forward(toy, kind):
    _, clean, shuffled = toy
    model = _stock(kind, d_vocab=int(clean.tokens.max()) + 1)
    fv = function_vector_heads(model, clean, shuffled)
    engine = function_vector_heads(model, clean, shuffled, method="engine")
    assert fv.method == "suffix" and engine.method == "engine"
    torch.testing.assert_close(fv.indirect_effect, engine.indirect_effect, atol=1e-6, rtol=1e-5)
    for layer, head in [(0, 1), (2, 3), fv.top(1)[0]]:
        assert float(fv.indirect_effect[layer, head]) == pytest.approx(
            float(_hooked_effect(model, clean, shuffled, layer, head)), abs=1e-6)
    assert fv.indirect_effect.abs().max() > 1e-4 and _no_hooks_left(model)


def test_the_head_that_carries_the_task_ranks_first(toy):
    """Only L1H2 writes to the residual stream (the others' W_O are zero): it alone has an effect, and ranks first."""
    _, clean, shuffled = toy
    model = _stock("gpt", n_layers=2, d_vocab=int(clean.tokens.max()) + 1, attn_only=True)
    with torch.no_grad():
        for layer in range(2):
            for head in range(4):
                if (layer, head) != (1, 2):
                    model.blocks[layer].attn.W_O[head] = 0
                else:
                    model.blocks[layer].attn.W_O[head] *= 20
        # targets: what the carrying head's clean mean output makes the model say on each shuffled prompt
        mean = mean_head_outputs(model, clean)[1, 2]
        rows, pred = torch.arange(len(shuffled)), shuffled.layout.pred_pos

        def hook(z, hook):
            z = z.clone()
            z[rows, pred, 2] = mean
            return z
        target = model.run_with_hooks(shuffled.tokens, fwd_hooks=[(H.hook(1, "z"), hook)])[rows, pred].argmax(-1)
    shuffled, clean = replace(shuffled, answers=target), replace(clean, answers=target)
    fv = function_vector_heads(model, clean, shuffled)
    assert fv.top(1) == [(1, 2)] and fv.indirect_effect[1, 2] > 0.01
    others = fv.indirect_effect.clone()
    others[1, 2] = 0
    assert others.abs().max() < 1e-6
    assert isinstance(fv, FunctionVectorResult) and "L 1H2" in str(fv) and fv.to_dict()["top"][0] == [1, 2]


def test_toy_model_suffix_equals_engine(toy):
    task, clean, shuffled = toy
    model = build_model(task)
    fv = function_vector_heads(model, clean, shuffled, method="suffix")
    engine = function_vector_heads(model, clean, shuffled, method="engine")
    torch.testing.assert_close(fv.indirect_effect, engine.indirect_effect, atol=1e-5, rtol=1e-4)


def test_errors():
    model = _stock("gpt")
    with pytest.raises(ValueError, match="method"):
        function_vector_heads(model, *([ICRecallTask(KnowledgeBase.random(8, 2, 8, 1.0, seed=0), 2).sample(2, seed=0)]
                                       * 2), method="nope")


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_patch_heads_is_the_hooked_forward(toy, kind):
    task, batch, _ = toy
    clean, corrupted, _ = task.corrupt_pairs(batch, "relation", seed=2)
    model = _stock(kind, d_vocab=int(max(clean.tokens.max(), clean.answers.max(), corrupted.answers.max())) + 1)
    result = P.patch_heads(model, clean, corrupted)
    rows, pred = torch.arange(len(clean)), corrupted.layout.pred_pos
    with torch.no_grad():
        _, cache = model.run_with_cache(clean.tokens)
        for layer, head in [(0, 0), (1, 3), (2, 1)]:
            def hook(z, hook):
                z = z.clone()
                z[rows, pred, head] = cache[H.hook(layer, "z")][rows, pred, head]
                return z
            lg = model.run_with_hooks(corrupted.tokens, fwd_hooks=[(H.hook(layer, "z"), hook)])[rows, pred]
            want = (lg[rows, clean.answers] - lg[rows, corrupted.answers]).mean()
            raw = result.raw[result.components.index(f"{H.hook(layer, 'z')}:h{head}"), 0]
            assert float(raw) == pytest.approx(float(want), abs=1e-5)
    assert result.heads().shape == (3, 4) and result.top_heads(1)[0] in [(a, b) for a in range(3) for b in range(4)]
    assert isinstance(result.reliable, bool) and _no_hooks_left(model)
    _moved._warned -= {"icr_interp.analysis.suffix_patching", "icr_interp.analysis.causal.patching.suffix.patch_heads"}
    sys.modules.pop("icr_interp.analysis.suffix_patching", None)  # imported again through the alias table
    with pytest.deprecated_call(match="suffix_patching moved to icr_interp.analysis.causal.patching.suffix .*removed in 0.4"):
        old_module = importlib.import_module("icr_interp.analysis.suffix_patching")
    with pytest.deprecated_call(match="suffix.patch_heads moved to icr_interp.analysis.causal.patching.heads.patch_heads_v1"):
        old = old_module.patch_heads(model, clean, corrupted)
    assert old.to_dict()["values"] == result.heads().tolist()  # the first release's path and dict (real_lm reads it)
