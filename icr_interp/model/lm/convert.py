"""From a GGUF to TransformerLens parameters: the transformers model, the TL config, the weight converter.

``transformers`` reads the GGUF (``from_pretrained(folder, gguf_file=name)``, which needs the ``gguf``
package): it dequantises every tensor to float32 and un-permutes Q/K from llama.cpp's rotary layout back to
Hugging Face's.  The ``HookedTransformerConfig`` comes from the config source the registry names: derived
from the HF config (:func:`llama_cfg_dict`), or TransformerLens's own named config
(``convert_hf_model_config``, a name-based branch that never touches the Hub), checked field by field
against the HF config.  The weights go through TransformerLens's own converter for the architecture
(:data:`ARCHITECTURES`) and are loaded without any folding or centring, so the logits equal HF's.
"""

import importlib.util
from collections.abc import Callable
from typing import Any

import torch

from icr_interp.model.lm.registry import PretrainedLMError, PretrainedLMSpec, get_spec


def tl_classes():
    """``(HookedTransformer, HookedTransformerConfig)`` of TransformerLens 3.x (a one-line error on 4.x, whose
    ``HookedTransformer`` is gone; 4.x loads through :mod:`icr_interp.model.lm.bridge` instead)."""
    from icr_interp.tl import compat

    if compat.TL_LINE != 3:
        raise PretrainedLMError(
            f"a HookedTransformer of a pretrained LM needs TransformerLens 3.x (found transformer-lens "
            f'{compat.TL_VERSION}); use a TL 3.x environment: pip install "transformer-lens>=3.9,<4"')
    return compat.HookedTransformer, compat.HookedTransformerConfig


def _rope_theta(hf_config) -> float:
    theta = getattr(hf_config, "rope_theta", None)  # transformers < 5; >= 5 has it in rope_parameters
    params = getattr(hf_config, "rope_parameters", None) or {}
    if theta is None and "full_attention" in params:  # per layer type (Gemma 3)
        params = params["full_attention"]
    return float(theta if theta is not None else params.get("rope_theta", 1e4))


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
    return {
        "d_model": hf_config.hidden_size, "d_head": d_head, "n_heads": n_heads,
        "n_key_value_heads": n_kv if n_kv != n_heads else None,  # not None switches TL to grouped-query attention
        "d_mlp": hf_config.intermediate_size, "n_layers": hf_config.num_hidden_layers,
        "n_ctx": hf_config.max_position_embeddings, "d_vocab": hf_config.vocab_size,
        "eps": hf_config.rms_norm_eps, "act_fn": hf_config.hidden_act, "gated_mlp": True,
        "normalization_type": "RMS", "final_rms": True,
        "positional_embedding_type": "rotary", "rotary_adjacent_pairs": False,  # HF's half-split rotary layout
        "rotary_dim": int(d_head * getattr(hf_config, "partial_rotary_factor", 1.0)),
        "rotary_base": _rope_theta(hf_config),
        "original_architecture": "LlamaForCausalLM",
    }


def gemma3_cfg_dict(hf_config) -> dict[str, Any]:
    """``HookedTransformerConfig`` fields for a Gemma 3 text HF config (TransformerLens's named Gemma 3 configs,
    derived: local/global layers, QK norm, norms before and after each sublayer, ``query_pre_attn_scalar``)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    local = (params.get("sliding_attention") or {}).get("rope_theta") or getattr(hf_config, "rope_local_base_freq",
                                                                                    1e4)
    layer_types = getattr(hf_config, "layer_types", None) or ["full_attention"] * hf_config.num_hidden_layers
    return {
        "d_model": hf_config.hidden_size, "d_head": hf_config.head_dim, "n_heads": hf_config.num_attention_heads,
        "n_key_value_heads": hf_config.num_key_value_heads, "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers, "n_ctx": hf_config.max_position_embeddings,
        "eps": hf_config.rms_norm_eps, "d_vocab": hf_config.vocab_size, "act_fn": hf_config.hidden_activation,
        "normalization_type": "RMS", "positional_embedding_type": "rotary",
        "rotary_base": _rope_theta(hf_config), "rotary_base_local": float(local),
        "use_attn_scale": True, "attn_scale": float(hf_config.query_pre_attn_scalar) ** 0.5,
        "gated_mlp": True, "final_rms": True, "use_normalization_before_and_after": True, "use_qk_norm": True,
        "window_size": hf_config.sliding_window, "use_local_attn": True,
        "attn_types": ["local" if t == "sliding_attention" else "global" for t in layer_types],
        "original_architecture": "Gemma3ForCausalLM",
    }


def named_cfg_dict(tl_name: str) -> dict[str, Any]:
    """TransformerLens's own config dict for ``tl_name`` (its name-based branch: no Hub access)."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    cfg = dict(convert_hf_model_config(tl_name))
    for key in ("trust_remote_code", "tokenizer_name", "quantization_method"):  # the tokenizer comes from the GGUF
        cfg.pop(key, None)
    return cfg


# (TL config field, HF config attribute): what a named config must agree on with the checkpoint it converts
_MUST_AGREE = (("d_model", "hidden_size"), ("n_layers", "num_hidden_layers"), ("n_heads", "num_attention_heads"),
               ("d_head", "head_dim"), ("n_key_value_heads", "num_key_value_heads"), ("d_mlp", "intermediate_size"),
               ("d_vocab", "vocab_size"), ("window_size", "sliding_window"))


def check_against_hf(cfg: dict[str, Any], hf_config, name: str) -> None:
    """One-line error if a named TL config disagrees with the checkpoint's own HF config on a shape field."""
    for tl_key, hf_key in _MUST_AGREE:
        hf_value = getattr(hf_config, hf_key, None)
        if hf_value is not None and tl_key in cfg and cfg[tl_key] != hf_value:
            raise PretrainedLMError(f"{name}: TransformerLens's config has {tl_key}={cfg[tl_key]} but the "
                                    f"checkpoint has {hf_key}={hf_value}")


def _llama_converter():
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    return convert_llama_weights


def _gemma_converter():
    from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

    return convert_gemma_weights


# HF model class name -> (config-dict function of the HF config, used where the spec names no TL config;
# factory returning TL's weight converter(hf_model, cfg) -> state dict)
ARCHITECTURES: dict[str, tuple[Callable[[Any], dict], Callable[[], Callable]]] = {
    "LlamaForCausalLM": (llama_cfg_dict, _llama_converter),
    "Gemma3ForCausalLM": (gemma3_cfg_dict, _gemma_converter),
}


def require_hf_stack(spec: PretrainedLMSpec) -> None:
    """One-line error naming what to install when ``transformers`` or ``gguf`` is missing."""
    missing = [m for m in ("transformers", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        raise PretrainedLMError(
            f"{spec.name}: converting the GGUF needs {' and '.join(missing)}; run: "
            f"pip install transformers gguf && {spec.install_command}")


def read_gguf(name: str, path, dtype: torch.dtype = torch.float32):
    """``(hf_model, tokenizer)`` read from the GGUF at ``path`` (dequantised; slow), the model in eval mode."""
    require_hf_stack(get_spec(name))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    hf_model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    return hf_model.eval(), tokenizer


def tl_cfg_dict(spec: PretrainedLMSpec, hf_model) -> dict[str, Any]:
    """The ``HookedTransformerConfig`` fields of ``spec``'s model, from its config source (plain JSON values)."""
    arch = type(hf_model).__name__
    if arch not in ARCHITECTURES or arch != spec.architecture:
        raise PretrainedLMError(f"{spec.name}: the GGUF loads as {arch}; the registry expects {spec.architecture}"
                                f" (converters: {', '.join(ARCHITECTURES)})")
    cfg_fn, _ = ARCHITECTURES[arch]
    if spec.tl_config is not None:
        cfg = named_cfg_dict(spec.tl_config)
        check_against_hf(cfg, hf_model.config, spec.name)
    else:
        cfg = cfg_fn(hf_model.config)
    return {**cfg, "model_name": spec.name, "default_prepend_bos": spec.prepend_bos, **spec.cfg_overrides}


def convert_weights(spec: PretrainedLMSpec, hf_model, cfg) -> dict[str, torch.Tensor]:
    """TransformerLens's converter for the architecture applied to ``hf_model`` (a state dict for ``cfg``)."""
    _, converter = ARCHITECTURES[type(hf_model).__name__]
    with torch.no_grad():
        return converter()(hf_model, cfg)
