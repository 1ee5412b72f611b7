"""TransformerLens 3.x's components, rewritten for the mirror: embeddings, LayerNorm, attention, MLP, unembedding.

Each class keeps TransformerLens 3.9's parameter names, shapes, registration
order (so ``state_dict`` keys and order match, buffers included) and hook
points, and computes with the same operations in the same order (``F.linear``
on the same rearranged weights, ``q @ k / attn_scale``, ``-inf`` masking,
NaN-cleaned softmax), so a checkpoint written by a 3.x ``HookedTransformer``
gives bit-identical logits here.  Only what the project's configurations use
is implemented: standard positions, LayerNorm or none, full multi-head
attention (split-qkv / attn-in inputs and ``use_attn_result`` included),
plain-activation MLPs.  Everything imported from TransformerLens here exists
on both the 3.x and the 4.x line.
"""

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities.activation_functions import SUPPORTED_ACTIVATIONS, apply_softcap
from transformer_lens.utilities.addmm import batch_addmm
from transformer_lens.utilities.attention import complex_attn_linear, simple_attn_linear

from icr_interp.tl.config import MirrorConfig

# An input with or without a head axis (split qkv / attn-in inputs carry one copy per head).
Resid = Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head_index d_model"]


class Embed(nn.Module):
    """Token embedding ``W_E: [d_vocab d_model]``."""

    def __init__(self, cfg: MirrorConfig):
        super().__init__()
        self.cfg = cfg
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens, :]


class PosEmbed(nn.Module):
    """Learned absolute positions ``W_pos: [n_ctx d_model]``, the same row for every example."""

    def __init__(self, cfg: MirrorConfig):
        super().__init__()
        self.cfg = cfg
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        pos_embed = self.W_pos[: tokens.size(-1), :]
        return einops.repeat(pos_embed, "pos d_model -> batch pos d_model", batch=tokens.size(0)).clone()


class Unembed(nn.Module):
    """``logits = resid @ W_U + b_U`` with ``W_U: [d_model d_vocab_out]`` (3.x's hook_in / hook_out kept)."""

    def __init__(self, cfg: MirrorConfig):
        super().__init__()
        self.cfg = cfg
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab_out, dtype=cfg.dtype))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab_out, dtype=cfg.dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_model]
        self.hook_out = HookPoint()  # [batch, pos, d_vocab_out]

    def forward(self, residual: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab_out"]:
        residual = self.hook_in(residual)
        # F.linear on the contiguous transpose: the matmul 3.x runs, hence the same float rounding.
        return self.hook_out(F.linear(residual, self.W_U.T.contiguous(), self.b_U))


class LayerNorm(nn.Module):
    """Centre, divide by the RMS (hooked as ``hook_scale``), then ``* w + b``."""

    def __init__(self, cfg: MirrorConfig, length: int | None = None):
        super().__init__()
        self.cfg = cfg
        self.eps = cfg.eps
        self.length = cfg.d_model if length is None else length
        self.w = nn.Parameter(torch.ones(self.length, dtype=cfg.dtype))
        self.b = nn.Parameter(torch.zeros(self.length, dtype=cfg.dtype))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, length]

    def forward(self, x: Resid) -> Resid:
        if self.cfg.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)  # normalise in full precision, as 3.x does
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized(x / scale).to(self.cfg.dtype)
        return x * self.w + self.b


class MLP(nn.Module):
    """``W_out act(W_in x + b_in) + b_out``; the project swaps its memory in for this module."""

    def __init__(self, cfg: MirrorConfig):
        super().__init__()
        self.cfg = cfg
        self.d_mlp = cfg.d_mlp
        self.act_fn = SUPPORTED_ACTIVATIONS[cfg.act_fn]
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, self.d_mlp, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(self.d_mlp, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(self.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(batch_addmm(self.b_in, self.W_in, x))  # fused addmm, as 3.x (and HF) do
        post = self.hook_post(self.act_fn(pre))
        return batch_addmm(self.b_out, self.W_out, post)


class Attention(nn.Module):
    """Multi-head attention, 3.x's weights: ``W_Q, W_K, W_V: [head d_model d_head]``, ``W_O: [head d_head d_model]``.

    ``hook_attn_scores`` holds the masked scores *before* the softmax, and an
    edit there changes the pattern; with ``cfg.use_attn_result`` the per-head
    outputs pass through ``hook_result`` before they are summed.
    """

    def __init__(self, cfg: MirrorConfig, layer_id: int = 0):
        super().__init__()
        self.cfg = cfg
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        # Registration order = 3.x's, so state_dict keys come in the same order.
        self.W_Q = nn.Parameter(torch.empty(h, d, e, dtype=cfg.dtype))
        self.W_O = nn.Parameter(torch.empty(h, e, d, dtype=cfg.dtype))
        self.b_Q = nn.Parameter(torch.zeros(h, e, dtype=cfg.dtype))
        self.b_O = nn.Parameter(torch.zeros(d, dtype=cfg.dtype))
        self.W_K = nn.Parameter(torch.empty(h, d, e, dtype=cfg.dtype))
        self.W_V = nn.Parameter(torch.empty(h, d, e, dtype=cfg.dtype))
        self.b_K = nn.Parameter(torch.zeros(h, e, dtype=cfg.dtype))
        self.b_V = nn.Parameter(torch.zeros(h, e, dtype=cfg.dtype))
        # 3.x keeps these two buffers in its state_dict; kept so checkpoints load strictly on either line.
        self.register_buffer("mask", torch.empty((0, 0), dtype=torch.bool))
        self.register_buffer("IGNORE", torch.tensor(-torch.inf))
        self.layer_id = layer_id
        self.attn_scale = cfg.attn_scale if cfg.use_attn_scale else 1.0
        if cfg.scale_attn_by_inverse_layer_idx:
            self.attn_scale *= layer_id + 1
        self.hook_k = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_q = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_z = HookPoint()  # [batch, pos, head_index, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head_index, query_pos, key_pos]
        self.hook_result = HookPoint()  # [batch, pos, head_index, d_model]

    def forward(self, query_input: Resid, key_input: Resid, value_input: Resid) -> Float[Tensor, "batch pos d_model"]:
        split = self.cfg.use_split_qkv_input or self.cfg.use_attn_in  # inputs carry a head axis
        linear = complex_attn_linear if split else simple_attn_linear
        q = self.hook_q(linear(query_input, self.W_Q, self.b_Q))
        k = self.hook_k(linear(key_input, self.W_K, self.b_K))
        v = self.hook_v(linear(value_input, self.W_V, self.b_V))
        scores = self.attention_scores(q, k)
        pattern = F.softmax(scores, dim=-1)
        pattern = torch.where(torch.isnan(pattern), torch.zeros_like(pattern), pattern)  # fully masked rows
        pattern = self.hook_pattern(pattern).to(dtype=v.dtype)
        # pattern @ v as a batched matmul (not einsum): the kernel 3.x runs, so the same rounding.
        z = self.hook_z(einops.rearrange(pattern @ einops.rearrange(v, "b k h e -> b h k e"), "b h q e -> b q h e"))
        return self.output(z)

    def attention_scores(self, q: Float[Tensor, "batch query_pos head_index d_head"],
                         k: Float[Tensor, "batch key_pos head_index d_head"]
                         ) -> Float[Tensor, "batch head_index query_pos key_pos"]:
        """``q . k / attn_scale``, soft-capped, causally masked, through ``hook_attn_scores``."""
        q_ = einops.rearrange(q, "b q h e -> b h q e")
        k_ = einops.rearrange(k, "b k h e -> b h e k")
        scores = apply_softcap(q_ @ k_ / self.attn_scale, self.cfg.attn_scores_soft_cap)
        if self.cfg.attention_dir == "causal":
            n_q, n_k = scores.shape[-2:]
            keep = torch.arange(n_k, device=scores.device)[None, :] <= torch.arange(n_q, device=scores.device)[:, None]
            scores = torch.where(keep, scores, self.IGNORE.to(scores.device))
        return self.hook_attn_scores(scores)

    def output(self, z: Float[Tensor, "batch pos head_index d_head"]) -> Float[Tensor, "batch pos d_model"]:
        """Heads through ``W_O`` and summed, or kept apart in ``hook_result`` first (``use_attn_result``)."""
        if not self.cfg.use_attn_result:
            w = einops.rearrange(self.W_O, "h e d -> d (h e)").contiguous()
            return F.linear(einops.rearrange(z, "b p h e -> b p (h e)"), w, self.b_O)
        result = self.hook_result((z[..., None] * self.W_O[None, None]).sum(-2))  # [b p h d], as 3.x
        return einops.reduce(result, "b p h d -> b p d", "sum") + self.b_O
