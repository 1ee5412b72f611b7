"""The exact query-only forward of a one-layer model: what training and patching both compute.

In a one-layer attention + MLP transformer without normalisation, the logits
at position ``q`` depend on the other positions only through attention's keys
and values: ``resid_post[q] = resid_pre[q] + attn_out[q] + mlp(resid_pre[q] +
attn_out[q])``.  So the loss at the query (training) and a patch that changes
one row (patching) need the MLP -- the expensive, N-wide memory -- at those
rows only.  :func:`query_path_applies` is the one check of when this is exact;
:func:`query_logits` and :func:`row_logits` are the one implementation, built
from the model's own modules (its attention, its MLP, its unembedding and
softcap) so that they give exactly what ``model(tokens)`` gives (tests check
logits and gradients).
"""

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icr_interp.model import hooks as H
from icr_interp.tl.compat import TLModel, apply_softcap

_ATTN_HOOKS = ("hook_q", "hook_k", "hook_v", "hook_z", "hook_attn_scores", "hook_pattern", "hook_result")


def query_path_applies(model: TLModel) -> bool:
    """Whether ``model`` is a one-layer attention (+ MLP) model the query-only forward is exact for."""
    c = model.cfg
    plain = not (c.parallel_attn_mlp or c.use_attn_in or c.use_split_qkv_input or c.use_normalization_before_and_after
                 or getattr(c, "load_in_4bit", False))
    tokenizer = getattr(model, "tokenizer", None)
    left_pad = tokenizer is not None and getattr(tokenizer, "padding_side", "right") == "left"
    return (c.n_layers == 1 and c.normalization_type is None and c.positional_embedding_type == "standard"
            and c.original_architecture is None and plain and not left_pad
            and c.n_key_value_heads in (None, c.n_heads))


def unembed(model: TLModel, resid: Float[Tensor, "row d_model"]) -> Float[Tensor, "row vocab"]:
    """Logits of final residual rows (unembedding, then the model's logit softcap).

    Without hooks on the unembedding this is ``resid @ W_U + b_U`` directly: TransformerLens's
    ``Unembed`` copies ``W_U.T`` into a contiguous tensor on every call (d_model x vocab floats,
    128 MB per step at 10^6 facts) to match Hugging Face's bfloat16 accumulation order.
    """
    u = model.unembed
    if any(getattr(u, name).fwd_hooks or getattr(u, name).bwd_hooks for name in ("hook_in", "hook_out")
           if hasattr(u, name)):
        logits = u(resid[:, None])[:, 0]
    else:
        logits = torch.addmm(u.b_U, resid, u.W_U)
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)


def row_logits(model: TLModel, resid_mid: Float[Tensor, "row d_model"]) -> Float[Tensor, "row vocab"]:
    """Logits of residual rows after attention: the block's MLP (unless attention-only), then the unembedding."""
    if model.cfg.attn_only:
        return unembed(model, resid_mid)
    mlp_out = model.blocks[0].mlp(resid_mid[:, None])[:, 0]
    return unembed(model, resid_mid + mlp_out)


def _reassociation_applies(model: TLModel) -> bool:
    """Our own models (a known attention configuration) with no hook on the attention's hook points."""
    if getattr(model, "icr_config", None) is None or not query_path_applies(model):
        return False
    attn = model.blocks[0].attn
    return not any(getattr(attn, h).fwd_hooks or getattr(attn, h).bwd_hooks for h in _ATTN_HOOKS if hasattr(attn, h))


def query_attention(model: TLModel, resid: Float[Tensor, "batch pos d_model"], query_pos: Int[Tensor, " batch"]
                    ) -> tuple[Float[Tensor, "batch head pos"], Float[Tensor, "batch d_model"]]:
    """The query row of every head and the attention output at the query, reassociated.

    ``score_j = (q W_K^T) . x_j`` and ``z = (Σ_j α_j x_j) W_V`` are the same sums as
    ``q . (x_j W_K)`` and ``Σ_j α_j (x_j W_V)`` (the pattern sums to 1, so ``b_V`` passes
    through), but cost ``d_model x d_head`` per *query* instead of per position.
    """
    attn, cfg = model.blocks[0].attn, model.cfg
    rows = torch.arange(resid.shape[0], device=resid.device)
    q = einops.einsum(resid[rows, query_pos], attn.W_Q, "b d, h d e -> b h e") + attn.b_Q
    qk = einops.einsum(q, attn.W_K, "b h e, h d e -> b h d")
    scores = einops.einsum(qk, resid, "b h d, b p d -> b h p") + einops.einsum(q, attn.b_K, "b h e, h e -> b h")[..., None]
    scores = apply_softcap(scores / attn.attn_scale, cfg.attn_scores_soft_cap)
    if cfg.attention_dir == "causal":
        future = torch.arange(resid.shape[1], device=resid.device)[None, :] > query_pos[:, None]
        scores = scores.masked_fill(future[:, None, :], float("-inf"))
    pattern = scores.softmax(-1)
    mixed = einops.einsum(pattern, resid, "b h p, b p d -> b h d")
    z = einops.einsum(mixed, attn.W_V, "b h d, h d e -> b h e") + attn.b_V
    return pattern, einops.einsum(z, attn.W_O, "b h e, h e d -> b d") + attn.b_O


def query_logits(model: TLModel, tokens: Int[Tensor, "batch pos"], query_pos: Int[Tensor, " batch"],
                 return_pattern: bool = False):
    """Logits at each example's query position, running the MLP there only.

    Our models with no hook on their attention use :func:`query_attention`
    (attention for the query rows only); other one-layer models run their own
    attention module at every position (it is exact for any configuration
    :func:`query_path_applies` accepts).  Falls back to the full forward when
    :func:`query_path_applies` is false.

    Returns:
        ``[batch vocab]`` logits, and with ``return_pattern`` also the last
        layer's query rows ``[batch head pos]``.
    """
    rows = torch.arange(len(tokens), device=tokens.device)
    query_pos = query_pos.to(tokens.device)
    if not query_path_applies(model):
        cache = {}
        name = H.hook(model.cfg.n_layers - 1, "pattern")
        with model.hooks(fwd_hooks=[(name, lambda act, hook: cache.__setitem__("p", act))] if return_pattern else []):
            logits = model(tokens)[rows, query_pos]
        return (logits, cache["p"][rows, :, query_pos]) if return_pattern else logits
    resid = model.hook_embed(model.embed(tokens)) + model.hook_pos_embed(model.pos_embed(tokens))
    if _reassociation_applies(model):
        pattern, attn_out = query_attention(model, resid, query_pos)
    else:
        cache = {}
        with model.hooks(fwd_hooks=[(H.hook(0, "pattern"), lambda act, hook: cache.__setitem__("p", act))]):
            attn_out = model.blocks[0].attn(query_input=resid, key_input=resid, value_input=resid)[rows, query_pos]
        pattern = cache["p"][rows, :, query_pos]
    logits = row_logits(model, resid[rows, query_pos] + attn_out)
    return (logits, pattern) if return_pattern else logits
