"""A ``HookedTransformer`` mirror on ``HookedRootModule``, for TransformerLens 4.x (which removed the original).

TransformerLens 4.0 keeps ``HookedRootModule`` and ``HookPoint`` ("the
supported way to add TransformerLens-style hooks to an arbitrary nn.Module")
and types ``transformer_lens.patching`` to a structural protocol (``cfg``,
``run_with_cache``, ``run_with_hooks``, ``to_tokens``).  Its replacement for
``HookedTransformer``, ``TransformerBridge``, cannot host our memory without
private calls, drops the memory from ``state_dict``, softmaxes before
``hook_attn_scores`` and raises on ``use_attn_result`` (measured on 4.3; docs/results.md,
"TransformerLens 3.x and 4.x").  So on 4.x
the project builds :class:`MirrorTransformer`: 3.9's ``HookedTransformer``
rewritten for our configurations (:mod:`icr_interp.tl.components`), with

* the same module tree, parameter names and shapes (``embed.W_E``,
  ``blocks.{l}.attn.W_Q: [head d_model d_head]``, ``unembed.W_U``, ...) and
  the same ``state_dict`` keys, so checkpoints cross lines in both directions;
* the same hook names in the same order (``model.hook_dict``), the same
  ``blocks.{l}.mlp`` slot for the memory, the same attention call
  ``attn(query_input=, key_input=, value_input=)`` the fast paths use;
* ``run_with_cache`` returning an ``ActivationCache``, ``to(device,
  print_details=False)``, ``to_tokens`` (token tensors only: no tokenizer),
  the stacked ``W_Q``/``W_E``/... properties and 3.x's hook-flag checks.

**Eval mode.**  4.x's patching refuses a model with any submodule in training
mode.  The mirror has no dropout or other train-time behaviour, so
:meth:`MirrorTransformer.setup` (run at construction and again by
``model.py`` after the memory is swapped in) puts every module in eval mode;
call ``model.eval()`` again after anything that calls ``model.train()``.
"""

from typing import NamedTuple

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import repeat_along_head_dimension
from transformer_lens.utilities.activation_functions import apply_softcap
from transformer_lens.utilities.devices import move_to_and_update_config
from transformer_lens.utilities.lm_utils import lm_cross_entropy_loss

from icr_interp.tl.components import MLP, Attention, Embed, LayerNorm, PosEmbed, Unembed
from icr_interp.tl.config import MirrorConfig

# hook-name suffix -> the config flag without which 3.x refuses a hook there (it never fires).
_FLAGGED_HOOKS = {"attn.hook_result": "use_attn_result", "hook_q_input": "use_split_qkv_input",
                  "hook_k_input": "use_split_qkv_input", "hook_v_input": "use_split_qkv_input",
                  "mlp_in": "use_hook_mlp_in", "attn_in": "use_attn_in"}


class Output(NamedTuple):
    """``return_type="both"``: logits and loss (3.x's ``Output``)."""

    logits: Float[Tensor, "batch pos d_vocab"]
    loss: Tensor


def _norm(cfg: MirrorConfig) -> nn.Module:
    return LayerNorm(cfg) if cfg.normalization_type == "LN" else nn.Identity()


class TransformerBlock(nn.Module):
    """``resid_mid = resid_pre + attn(ln1(resid_pre))``, ``resid_post = resid_mid + mlp(ln2(resid_mid))``."""

    def __init__(self, cfg: MirrorConfig, block_index: int):
        super().__init__()
        self.cfg = cfg
        self.ln1 = _norm(cfg)
        if not cfg.attn_only:
            self.ln2 = _norm(cfg)
        self.attn = Attention(cfg, block_index)
        if not cfg.attn_only:
            self.mlp = MLP(cfg)  # model.py replaces the last one with the memory
        self.hook_attn_in = HookPoint()  # [batch, pos, n_heads, d_model]
        self.hook_q_input = HookPoint()  # [batch, pos, n_heads, d_model]
        self.hook_k_input = HookPoint()  # [batch, pos, n_heads, d_model]
        self.hook_v_input = HookPoint()  # [batch, pos, n_heads, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        if not cfg.attn_only:
            self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(self, resid_pre: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        resid_pre = self.hook_resid_pre(resid_pre)
        attn_in = resid_pre
        if self.cfg.use_attn_in:  # one copy per head, so a hook can edit one head's input
            attn_in = self.hook_attn_in(repeat_along_head_dimension(resid_pre, n_heads=self.cfg.n_heads))
        q_in = k_in = v_in = attn_in
        if self.cfg.use_split_qkv_input:
            q_in, k_in, v_in = (hook(repeat_along_head_dimension(resid_pre, n_heads=self.cfg.n_heads))
                                for hook in (self.hook_q_input, self.hook_k_input, self.hook_v_input))
        attn_out = self.hook_attn_out(self.attn(query_input=self.ln1(q_in), key_input=self.ln1(k_in),
                                                value_input=self.ln1(v_in)))
        if self.cfg.attn_only:
            return self.hook_resid_post(resid_pre + attn_out)
        resid_mid = self.hook_resid_mid(resid_pre + attn_out)
        mlp_in = self.hook_mlp_in(resid_mid.clone()) if self.cfg.use_hook_mlp_in else resid_mid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid_mid + mlp_out)


def _stacked(part: str, name: str, doc: str) -> property:
    """A property stacking ``blocks[l].<part>.<name>`` over layers (3.x's ``model.W_Q`` and friends)."""
    return property(lambda self: torch.stack([getattr(getattr(b, part), name) for b in self.blocks]), doc=doc)


class MirrorTransformer(HookedRootModule):
    """TransformerLens 3.9's ``HookedTransformer`` for the configurations :class:`MirrorConfig` accepts."""

    def __init__(self, cfg: MirrorConfig | dict, tokenizer: object = None, move_to_device: bool = True,
                 default_padding_side: str | None = None):
        super().__init__()
        self.cfg = MirrorConfig.unwrap(cfg)
        bad = self.cfg.unsupported()
        if bad:
            raise NotImplementedError(f"the TransformerLens-4 mirror does not implement {', '.join(bad)}")
        if tokenizer is not None:
            raise NotImplementedError("the TransformerLens-4 mirror takes token ids only (no tokenizer)")
        self.tokenizer = None
        self.embed = Embed(self.cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.pos_embed = PosEmbed(self.cfg)
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        if self.cfg.use_hook_tokens:
            self.hook_tokens = HookPoint()  # [batch, pos]
        self.blocks = nn.ModuleList([TransformerBlock(self.cfg, i) for i in range(self.cfg.n_layers)])
        if self.cfg.normalization_type == "LN":
            self.ln_final = LayerNorm(self.cfg)
        self.unembed = Unembed(self.cfg)
        if self.cfg.init_weights:
            self.init_weights()
        if move_to_device:
            nn.Module.to(self, self.cfg.device)
        self.setup()

    def setup(self) -> None:
        """Name and index the hook points (``HookedRootModule.setup``), then enter eval mode (module docstring)."""
        super().setup()
        self.eval()

    def init_weights(self) -> None:
        """3.x's "gpt2" init: every ``W_*`` ~ N(0, initializer_range), seeded by ``cfg.seed``; biases stay 0."""
        if self.cfg.seed is not None:
            torch.manual_seed(self.cfg.seed)
        for name, param in self.named_parameters():  # 3.x's order, so a seed gives 3.x's weights
            if "W_" in name:
                nn.init.normal_(param, std=self.cfg.initializer_range)

    def check_hooks_to_add(self, hook_point, hook_point_name: str, hook, dir="fwd", is_permanent=False,
                           prepend=False) -> None:
        """Refuse hooks on points that never fire with the current flags (as 3.x does)."""
        for suffix, flag in _FLAGGED_HOOKS.items():
            if hook_point_name.endswith(suffix) and not getattr(self.cfg, flag):
                raise AssertionError(f"Cannot add hook {hook_point_name} if {flag} is False")

    def forward(self, input: Int[Tensor, "batch pos"] | Int[Tensor, " pos"] | Float[Tensor, "batch pos d_model"],
                return_type: str | None = "logits", loss_per_token: bool = False, start_at_layer: int | None = None,
                tokens: Int[Tensor, "batch pos"] | None = None, stop_at_layer: int | None = None):
        """Logits ``[batch pos d_vocab_out]`` of token ids (or the loss, or both, or ``None``).

        As 3.x: ``start_at_layer`` takes a residual stream ``[batch pos d_model]``
        instead of tokens, ``stop_at_layer`` returns the residual before that block.
        """
        if start_at_layer is None:
            tokens = input[None] if input.ndim == 1 else input
            residual = self.embed_tokens(tokens.to(self.cfg.device))
        else:
            residual = input
        for block in self.blocks[start_at_layer or 0:stop_at_layer]:
            residual = block(residual)
        if stop_at_layer is not None:
            return residual
        if self.cfg.normalization_type is not None:
            residual = self.ln_final(residual)
        if return_type is None:
            return None
        logits = apply_softcap(self.unembed(residual), self.cfg.output_logits_soft_cap)
        if return_type == "logits":
            return logits
        if tokens is None:
            raise ValueError("tokens must be passed in if return_type is 'loss' or 'both'")
        loss = lm_cross_entropy_loss(logits, tokens.to(logits.device), per_token=loss_per_token)
        if return_type == "loss":
            return loss
        if return_type == "both":
            return Output(logits, loss)
        raise ValueError(f"return_type must be None, 'logits', 'loss' or 'both', got {return_type!r}")

    def embed_tokens(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream entering block 0: ``hook_embed(W_E[tokens]) + hook_pos_embed(W_pos)``."""
        if self.cfg.use_hook_tokens:
            tokens = self.hook_tokens(tokens)
        return self.hook_embed(self.embed(tokens)) + self.hook_pos_embed(self.pos_embed(tokens))

    def run_with_cache(self, *model_args, return_cache_object: bool = True, remove_batch_dim: bool = False,
                       **kwargs):
        """``(output, ActivationCache)`` (or a plain dict with ``return_cache_object=False``), as 3.x."""
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if not return_cache_object:
            return out, cache_dict
        return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

    def to_tokens(self, input: Tensor | str | list, prepend_bos=None, padding_side=None, move_to_device: bool = True,
                  truncate: bool = True) -> Int[Tensor, "batch pos"]:
        """Token ids as a ``[batch pos]`` tensor; strings need a tokenizer, which the mirror has not."""
        if not isinstance(input, Tensor):
            raise ValueError("Cannot use to_tokens without a tokenizer: pass token ids")
        tokens = input[None] if input.ndim == 1 else input
        tokens = tokens[:, : self.cfg.n_ctx] if truncate else tokens
        return tokens.to(self.cfg.device) if move_to_device else tokens

    def to(self, device_or_dtype: torch.device | str | torch.dtype, print_details: bool = True) -> "MirrorTransformer":
        """``nn.Module.to`` that also records the device (or dtype) in ``cfg`` (3.x's signature)."""
        return move_to_and_update_config(self, device_or_dtype, print_details)

    def cuda(self, device: int | None = None) -> "MirrorTransformer":
        return self.to("cuda" if device is None else f"cuda:{device}")

    def cpu(self) -> "MirrorTransformer":
        return self.to(torch.device("cpu"))

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab_out"]:
        return self.unembed.W_U

    @property
    def b_U(self) -> Float[Tensor, " d_vocab_out"]:
        return self.unembed.b_U

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.embed.W_E

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self.pos_embed.W_pos

    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab_plus_n_ctx d_model"]:
        """Token and position embeddings stacked: an overcomplete basis of the input space."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    W_Q = _stacked("attn", "W_Q", "[n_layers n_heads d_model d_head]")
    W_K = _stacked("attn", "W_K", "[n_layers n_heads d_model d_head]")
    W_V = _stacked("attn", "W_V", "[n_layers n_heads d_model d_head]")
    W_O = _stacked("attn", "W_O", "[n_layers n_heads d_head d_model]")
    b_Q = _stacked("attn", "b_Q", "[n_layers n_heads d_head]")
    b_K = _stacked("attn", "b_K", "[n_layers n_heads d_head]")
    b_V = _stacked("attn", "b_V", "[n_layers n_heads d_head]")
    b_O = _stacked("attn", "b_O", "[n_layers d_model]")
    W_in = _stacked("mlp", "W_in", "[n_layers d_model d_mlp]")
    W_out = _stacked("mlp", "W_out", "[n_layers d_mlp d_model]")
    b_in = _stacked("mlp", "b_in", "[n_layers d_mlp]")
    b_out = _stacked("mlp", "b_out", "[n_layers d_model]")

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q W_K^T`` per layer and head, factored."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V W_O`` per layer and head, factored."""
        return FactoredMatrix(self.W_V, self.W_O)
