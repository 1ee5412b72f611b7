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
"""

from importlib.metadata import PackageNotFoundError, version

from torch import nn
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


__all__ = ["ActivationCache", "HookedRootModule", "HookPoint", "HookedTransformer", "HookedTransformerConfig",
           "ModelBase", "TLModel", "TL_LINE", "TL_VERSION", "apply_softcap", "ensure_eval"]
