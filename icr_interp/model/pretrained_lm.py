"""The old home of the pretrained-LM loader, kept so that ``icr_interp.model.pretrained_lm.X`` still works.

The loader is the package :mod:`icr_interp.model.lm` (registry, source, convert, cache, load, bridge); every
name this module used to define is re-exported from there unchanged.
"""

from icr_interp.model.lm import (  # noqa: F401
    ARCHITECTURES, CACHE_FORMAT, META, REGISTRY, TOKENIZER, WEIGHTS, BrokenCache, PretrainedLMError,
    PretrainedLMSpec, compare_with_transformers, default_cache_root, find_cache, get_spec, llama_cfg_dict,
    load_hf_model, load_pretrained_lm, locate_source, logits_both, materialize_source, pretrained_lm_names,
    source_installed, spec_of,
)

__all__ = ["ARCHITECTURES", "CACHE_FORMAT", "META", "REGISTRY", "TOKENIZER", "WEIGHTS", "BrokenCache",
           "PretrainedLMError", "PretrainedLMSpec", "compare_with_transformers", "default_cache_root", "find_cache",
           "get_spec", "llama_cfg_dict", "load_hf_model", "load_pretrained_lm", "locate_source", "logits_both",
           "materialize_source", "pretrained_lm_names", "source_installed", "spec_of"]
