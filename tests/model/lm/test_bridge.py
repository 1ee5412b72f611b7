"""``load_pretrained_lm`` on TransformerLens 4.x: a ``TransformerBridge`` from the cached transformers model.

Tiny random Llama and Gemma 3 models with SmolLM2's tokenizer are registered in place of GGUF models: the bridge
is booted offline, its logits equal transformers', the toolkit's hook names fire, the BOS rule holds, a later
load reads only the cache, and broken cached weights are re-converted as on 3.x.  Skipped on 3.x (where
``load_pretrained_lm`` returns a ``HookedTransformer``; tests/model/lm/test_registry.py covers that).
"""

import os

import pytest
import torch

from icr_interp.model.lm import cache as C
from icr_interp.model.lm import load as L
from icr_interp.tl import compat

from _tiny_lms import PROMPTS, register_tiny, smol_tokenizer, tiny_gemma, tiny_llama  # noqa: F401  (fixture)

pytestmark = pytest.mark.skipif(compat.TL_LINE != 4, reason="the TransformerBridge path is TransformerLens 4.x's")


@pytest.mark.parametrize("arch, prepend_bos", [("llama", False), ("gemma", True)])
def test_bridge_of_a_tiny_model_matches_transformers_offline(monkeypatch, tmp_path, smol_tokenizer, arch,
                                                             prepend_bos):
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    hf = (tiny_gemma if arch == "gemma" else tiny_llama)(len(smol_tokenizer))
    _, cache, calls = register_tiny(monkeypatch, tmp_path, hf, smol_tokenizer, name=f"tiny-{arch}",
                                    prepend_bos=prepend_bos)
    bridge = L.load_pretrained_lm(f"tiny-{arch}", cache_dir=cache)
    again = L.load_pretrained_lm(f"tiny-{arch}", cache_dir=cache)
    assert compat.is_bridge(bridge) and calls == [f"tiny-{arch}"]  # the second load read only the cache
    assert [p.name[:2] for p in (cache / f"tiny-{arch}").iterdir()] == [f"b{C.CACHE_FORMAT}"]
    assert bridge.cfg.default_prepend_bos is prepend_bos and bridge.tokenizer.add_bos_token is prepend_bos
    ids = bridge.tokenizer(PROMPTS[0])["input_ids"]
    assert bridge.to_tokens(PROMPTS[0])[0].tolist() == ids and (ids[0] == smol_tokenizer.bos_token_id) is prepend_bos
    tokens = bridge.to_tokens(PROMPTS[1])
    with torch.no_grad():
        logits, cache_ = again.run_with_cache(tokens)
        reference = hf(tokens).logits
    assert float((logits - reference).abs().max()) < 1e-4
    for name in ("blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.1.attn.hook_pattern",
                 "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out", "ln_final.hook_normalized"):
        assert name in cache_, name
    assert cache_["blocks.1.attn.hook_z"].shape[-2:] == (hf.config.num_attention_heads, hf.config.head_dim)
    assert compat.per_head(bridge, "W_V").shape[1] == hf.config.num_attention_heads


def test_broken_bridge_weights_are_reconverted(monkeypatch, tmp_path, smol_tokenizer):
    hf = tiny_llama(len(smol_tokenizer))
    _, cache, calls = register_tiny(monkeypatch, tmp_path, hf, smol_tokenizer, name="tiny-llama")
    with torch.no_grad():
        reference = L.load_pretrained_lm("tiny-llama", cache_dir=cache)(PROMPTS[0])
    version = C.find_cache("tiny-llama", cache, kind="b")
    weights = version / "hf" / "model.safetensors"
    damaged = weights.with_name("damaged")
    damaged.write_bytes(weights.read_bytes()[:1000])
    os.replace(damaged, weights)
    with pytest.warns(UserWarning, match="broken"):
        again = L.load_pretrained_lm("tiny-llama", cache_dir=cache)
    assert calls == ["tiny-llama", "tiny-llama"]
    with torch.no_grad():
        assert torch.equal(reference, again(PROMPTS[0]))
