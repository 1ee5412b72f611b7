"""The one place that imports TransformerLens internals whose home may move between releases.

Every other module imports ``HookPoint``, ``ActivationCache``, the model base
classes and ``apply_softcap`` from here, so supporting another TransformerLens
line means changing this file only.  ``TLModel`` is the annotation analyses
use for "any TransformerLens model with ``cfg``, ``run_with_cache`` and
``run_with_hooks``" (our :class:`~icr_interp.model.ICRModel` or a stock
``HookedTransformer``).
"""

from transformer_lens import ActivationCache, HookedTransformer, HookedTransformerConfig
from transformer_lens.hook_points import HookedRootModule, HookPoint
from transformer_lens.utilities.activation_functions import apply_softcap

TL_LINE = 3  # the TransformerLens major version in use
TLModel = HookedTransformer  # what analyses accept (annotation)

__all__ = ["ActivationCache", "HookedTransformer", "HookedTransformerConfig", "HookedRootModule", "HookPoint",
           "apply_softcap", "TL_LINE", "TLModel"]
