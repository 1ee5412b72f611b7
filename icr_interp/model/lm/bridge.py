"""A registered LM on TransformerLens 4.x: the transformers model booted into a ``TransformerBridge``.

4.x removed ``HookedTransformer``; its ``TransformerBridge`` wraps a transformers model and, after
``enable_compatibility_mode()``, fires the hook names the toolkit uses (``blocks.L.attn.hook_z``,
``hook_pattern``, ``hook_resid_pre``, ...).  The transformers model is the same one the 3.x path converts
(read once from the GGUF), cached as ``save_pretrained`` output in a ``b<FORMAT>-<sha16>`` version folder with
the same checks as the 3.x cache (weights' sha256 in ``meta.json``, broken versions re-converted, destination
checked first), so a later load reads only that folder.

Compatibility mode runs with ``no_processing=True``: no layer-norm folding or centring, as the 3.x loader does,
so the logits equal transformers' (and the 3.x model's) rather than differ by a per-position constant.  The
registry's BOS rule is set on the bridge's config and tokenizer, as on 3.x.
"""

from pathlib import Path

import torch

from icr_interp.model.lm import cache as C
from icr_interp.model.lm.bos import keep_bos_rule
from icr_interp.model.lm.prepare import ready_with_tokenizer
from icr_interp.model.lm.registry import PretrainedLMError, PretrainedLMSpec

HF_WEIGHTS = f"{C.HF}/model.safetensors"  # what transformers' save_pretrained writes (safetensors, tied ones once)


def hf_payload(spec: PretrainedLMSpec, hf_model) -> tuple[dict, object]:
    """What a bridge version holds: ``(the HF config as a dict, writer of the transformers model)``."""
    if type(hf_model).__name__ != spec.architecture:
        raise PretrainedLMError(f"{spec.name}: the GGUF loads as {type(hf_model).__name__}; the registry expects "
                                f"{spec.architecture}")

    def write(tmp: Path) -> str:
        # the GGUF read dequantised every weight (no packed Gguf* module: no kernels, or the legacy loader), but
        # its quantizer stays attached and save_pretrained refuses the model as "quantized with gguf"
        if not any(type(m).__name__.startswith("Gguf") for m in hf_model.modules()):
            hf_model.hf_quantizer = None
            hf_model.config.__dict__.pop("quantization_config", None)
        hf_model.save_pretrained(tmp / C.HF)
        if not (tmp / HF_WEIGHTS).is_file():
            raise PretrainedLMError(f"{spec.name}: save_pretrained wrote no single {HF_WEIGHTS}")
        return HF_WEIGHTS

    return hf_model.config.to_dict(), write


def boot(spec: PretrainedLMSpec, hf_model, tokenizer, device: torch.device, dtype: torch.dtype):
    """The bridge around ``hf_model`` in compatibility mode (no weight processing), with the BOS rule set."""
    from transformer_lens.model_bridge import TransformerBridge

    bridge = TransformerBridge.boot_transformers(spec.hf_name or spec.name, hf_model=hf_model, tokenizer=tokenizer,
                                                 device=device, dtype=dtype)
    bridge.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    keep_bos_rule(bridge, spec.prepend_bos)  # the boot turned add_bos_token on, as 3.x's set_tokenizer does
    bridge.cfg.model_name = spec.name
    return bridge.eval()


def load_bridge(spec: PretrainedLMSpec, cache_dir, device: torch.device, dtype: torch.dtype):
    """``spec``'s model as a ``TransformerBridge`` from the cache (converted from the GGUF the first time)."""
    from transformers import AutoModelForCausalLM

    version_dir, tokenizer = ready_with_tokenizer(spec, cache_dir, kind="b", payload=hf_payload)
    hf_model = AutoModelForCausalLM.from_pretrained(version_dir / C.HF, dtype=dtype, local_files_only=True)
    return boot(spec, hf_model.eval(), tokenizer, device, dtype)
