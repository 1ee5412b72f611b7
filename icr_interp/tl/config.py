"""The mirror's config: TransformerLens 3.x's ``HookedTransformerConfig``, trimmed to what the mirror builds.

TransformerLens 4.0 removed ``HookedTransformerConfig`` together with
``HookedTransformer``.  :class:`MirrorConfig` keeps its name's contract for
the configurations this project builds: the same field names, the same
defaults and the same derived values (``attn_scale = sqrt(d_head)``,
``d_vocab_out = d_vocab``, ``initializer_range = 0.8 / sqrt(d_model)``, a
``seed`` that seeds torch, ``random`` and numpy), so that
``HookedTransformerConfig(n_layers=..., d_model=..., ...)`` written for 3.x
builds the same model on 4.x.  It extends TransformerLens's own
``TransformerLensConfig`` (present on both lines), which is what
``transformer_lens.patching``'s structural model protocol names as ``cfg``.

Fields the mirror does not implement (rotary positions, RMS norms, grouped
keys, parallel attention + MLP, ...) keep their 3.x defaults so that code
reading them (``icr_interp.model.forward.query_path_applies``) works;
:meth:`MirrorConfig.unsupported` names any that are set, and the mirror
refuses to build such a model rather than silently ignore the setting.
"""

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformer_lens.config import TransformerLensConfig
from transformer_lens.utilities.activation_functions import SOFTCAP_DISABLED, SUPPORTED_ACTIVATIONS

# Activation functions the mirror's MLP can apply as plain functions (solu_ln needs an
# extra LayerNorm and hook, xielu has parameters: neither is in TransformerLens's 3.x MLP contract here).
MIRROR_ACTIVATIONS = tuple(sorted(set(SUPPORTED_ACTIVATIONS) - {"solu_ln", "xielu"}))

# field -> the only value(s) the mirror implements (3.x defaults).
_ONLY = {
    "positional_embedding_type": ("standard",),
    "normalization_type": (None, "LN"),
    "n_key_value_heads": (None,),
    "parallel_attn_mlp": (False,),
    "use_normalization_before_and_after": (False,),
    "original_architecture": (None,),
    "gated_mlp": (False,),
    "num_experts": (None,),
    "final_rms": (False,),
    "post_embedding_ln": (False,),
    "load_in_4bit": (False,),
    "n_devices": (1,),
    "use_local_attn": (False,),
    "init_mode": ("gpt2",),
    "tokenizer_name": (None,),
    "attention_dir": ("causal", "bidirectional"),
}


@dataclass
class MirrorConfig(TransformerLensConfig):
    """``HookedTransformerConfig`` for the mirror: the 3.x fields it reads, with 3.x defaults.

    The base class holds the core shape fields (``d_model``, ``d_head``,
    ``n_layers``, ``n_ctx``, ``n_heads``, ``d_mlp``, ``d_vocab``, ``device``,
    ``act_fn``, ``normalization_type`` (default ``"LN"``), ``attn_only``,
    ``use_attn_result``, ``use_split_qkv_input``, ``default_prepend_bos``,
    ``positional_embedding_type``, ``n_key_value_heads``, ``eps``, ``dtype``, ...).
    """

    model_name: str = "custom"  # a label only
    use_attn_scale: bool = True  # divide attention scores by attn_scale
    attn_scale: float = -1.0  # -1: sqrt(d_head)
    scale_attn_by_inverse_layer_idx: bool = False  # layer l also divides its scores by l + 1
    use_hook_mlp_in: bool = False  # run hook_mlp_in (a copy of resid_mid) before the MLP
    use_attn_in: bool = False  # run hook_attn_in: one copy of resid_pre per head
    use_hook_tokens: bool = False  # add hook_tokens on the input ids
    attention_dir: str = "causal"  # causal | bidirectional
    attn_scores_soft_cap: float = SOFTCAP_DISABLED  # cap * tanh(scores / cap) when > 0
    output_logits_soft_cap: float = SOFTCAP_DISABLED  # cap * tanh(logits / cap) when > 0
    d_vocab_out: int = -1  # -1: d_vocab
    seed: int | None = None  # seeds torch, random and numpy (as 3.x does) and the weight init
    init_weights: bool = True  # draw W_* ~ N(0, initializer_range) at construction
    init_mode: str = "gpt2"  # the only init the mirror implements
    initializer_range: float = -1.0  # -1: 0.8 / sqrt(d_model)
    n_params: int | None = None  # attention + MLP weight count (derived)
    # Read by code that branches on them; the mirror implements only the defaults (see _ONLY).
    original_architecture: str | None = None
    parallel_attn_mlp: bool = False
    use_normalization_before_and_after: bool = False
    post_embedding_ln: bool = False
    load_in_4bit: bool = False
    n_devices: int = 1
    use_local_attn: bool = False
    tokenizer_name: str | None = None
    tokenizer_prepends_bos: bool | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.seed is not None:  # 3.x seeds every generator when the config is made
            torch.manual_seed(self.seed)
            random.seed(self.seed)
            np.random.seed(self.seed)
        if self.initializer_range < 0:
            self.initializer_range = 0.8 / math.sqrt(self.d_model)
        if self.d_vocab_out == -1:
            self.d_vocab_out = self.d_vocab
        if self.use_attn_scale and self.attn_scale == -1.0:
            self.attn_scale = math.sqrt(self.d_head)
        mlp = 0 if self.attn_only else self.d_model * self.d_mlp * 2
        self.n_params = self.n_layers * (self.d_model * self.d_head * self.n_heads * 4 + mlp)
        if self.default_prepend_bos not in (True, False):
            raise ValueError(f"default_prepend_bos must be True or False, got {self.default_prepend_bos!r}")

    def unsupported(self) -> list[str]:
        """``field=value`` for every setting the mirror does not implement (empty: it can build this)."""
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in _ONLY.items() if getattr(self, k) not in ok]
        if not self.attn_only and self.act_fn not in MIRROR_ACTIVATIONS:
            bad.append(f"act_fn={self.act_fn!r}")
        return bad

    @classmethod
    def unwrap(cls, config: "dict[str, Any] | TransformerLensConfig") -> "MirrorConfig":
        """A dict or another TransformerLens config as a :class:`MirrorConfig` (as 3.x's ``unwrap``)."""
        if isinstance(config, cls):
            return config
        return cls.from_dict(config if isinstance(config, dict) else config.to_dict())

    def __repr__(self) -> str:
        return "MirrorConfig:\n" + "\n".join(f"  {k}: {v!r}" for k, v in self.to_dict().items())
