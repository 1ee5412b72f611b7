"""The one place that knows which TransformerLens line is installed, and what moved between lines.

Every other module imports ``HookPoint``, ``HookedRootModule``,
``ActivationCache``, ``apply_softcap``, the model base class and its config
from here, so supporting another TransformerLens line means changing this file
(and the mirror modules it picks) only.

* **3.x** (the default, ``transformer-lens>=3.9,<4``): ``ModelBase`` is
  ``transformer_lens.HookedTransformer`` and ``HookedTransformerConfig`` is
  TransformerLens's own -- nothing changes for 3.x users.
* **4.x** removed ``HookedTransformer`` and ``HookedTransformerConfig``.
  ``ModelBase`` is then :class:`~icr_interp.tl.mirror.MirrorTransformer`, a
  mirror of 3.9's ``HookedTransformer`` on ``HookedRootModule`` (same
  parameter names, hook names and ``state_dict`` keys), built from
  :class:`~icr_interp.tl.config.MirrorConfig`.  ``HookPoint``,
  ``HookedRootModule``, ``ActivationCache`` and ``apply_softcap`` still exist
  on 4.x; only ``HookedRootModule``'s home changed (``hook_points`` no longer
  re-exports it), hence the top-level import below.

``TLModel`` is the annotation for "a model the analyses accept": on 3.x any
``HookedTransformer`` (ours or stock); on 4.x any object satisfying
TransformerLens's structural ``TransformerLensModel`` protocol (``cfg``,
``run_with_cache``, ``run_with_hooks``, ``to_tokens``), which the mirror does.
``ensure_eval`` puts a model in the eval mode 4.x's patching insists on.

**The 4.x bridge.**  A real LM on 4.x is a ``TransformerBridge`` (a transformers
model behind TransformerLens's hook names, :mod:`icr_interp.model.lm.bridge`).
Its hooks fire like ``HookedTransformer``'s, but its blocks are the transformers
model's: a strategy that calls a block itself (the patching engine's suffix
recomputation, which passes a ``past_kv_cache_entry``) does not apply and must
take the general hooked path -- :func:`is_bridge` says when.  Its ``W_K``/``W_V``
hold one entry per key/value head under grouped-query attention, where
``HookedTransformer``'s repeat them per query head; :func:`per_head` gives
``HookedTransformer``'s shape on both.
"""

from importlib.metadata import PackageNotFoundError, version

from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.activation_functions import apply_softcap

try:
    TL_VERSION = version("transformer-lens")  # for reports; the switch below tests the feature itself
except PackageNotFoundError:  # a source checkout on sys.path
    TL_VERSION = "unknown"

try:  # 4.x raises ImportError (with a migration note) for the removed class
    from transformer_lens import HookedTransformer as ModelBase
    from transformer_lens import HookedTransformerConfig

    TL_LINE = 3  # the TransformerLens major line in use
    TLModel = ModelBase
except ImportError:
    from transformer_lens.model_protocol import TransformerLensModel as TLModel

    from icr_interp.tl.config import MirrorConfig as HookedTransformerConfig
    from icr_interp.tl.mirror import MirrorTransformer as ModelBase

    TL_LINE = 4

HookedTransformer = ModelBase  # TransformerLens 3.x's class on 3.x, the mirror on 4.x: one name on both lines


def ensure_eval(model: nn.Module) -> nn.Module:
    """``model`` in eval mode (returned), as TransformerLens 4.x's patching requires; a no-op for our models on 4.x.

    The project's models have no dropout, so eval and training mode compute the same numbers.
    """
    if any(m.training for m in model.modules()):
        model.eval()
    return model


def is_bridge(model) -> bool:
    """Whether ``model`` is TransformerLens 4.x's ``TransformerBridge`` (its blocks are a transformers model's:
    only hooks reach inside them, so strategies that run a block directly must fall back to hooked forwards)."""
    return any(c.__name__ == "TransformerBridge" and c.__module__.startswith("transformer_lens.model_bridge")
               for c in type(model).__mro__)


def per_head(model, name: str) -> Tensor:
    """``model.<name>`` (``W_Q``, ``W_K``, ``W_V``, ``W_O``, ``b_Q``, ``b_K``, ``b_V``) with one entry per query head.

    ``HookedTransformer`` repeats the key/value heads of grouped-query attention per query head itself
    (``repeat_interleave`` over the head axis, axis 1 of ``[layer head ...]``); a ``TransformerBridge`` returns
    ``n_key_value_heads`` entries, repeated here the same way, so analyses see the same tensor on both lines.
    """
    weight = getattr(model, name)
    n_heads = model.cfg.n_heads
    if weight.shape[1] != n_heads and n_heads % weight.shape[1] == 0:
        weight = weight.repeat_interleave(n_heads // weight.shape[1], dim=1)
    return weight


__all__ = ["ActivationCache", "HookedRootModule", "HookPoint", "HookedTransformer", "HookedTransformerConfig",
           "ModelBase", "TLModel", "TL_LINE", "TL_VERSION", "apply_softcap", "ensure_eval", "is_bridge", "per_head"]
