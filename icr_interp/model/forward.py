"""The exact query-only forward: what training and patching both compute.

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

_ATTN_HOOKS = H.ATTN_LEAVES
# The last block's own hook points, which the query-only path does not call: a hook there needs the full forward.
_BLOCK_HOOKS = H.BLOCK_LEAVES


def query_path_applies(model: TLModel) -> bool:
    """Whether ``model`` is a one-layer attention (+ MLP) model the query-only forward is exact for."""
    return model.cfg.n_layers == 1 and last_layer_path_applies(model)


def last_layer_path_applies(model: TLModel) -> bool:
    """Whether the query-only forward of the *last* layer is exact for ``model``, whatever its depth.

    The logits at ``q`` need every position of the earlier layers (the last layer's keys and values read
    them), but of the last layer only row ``q``: its attention's query row and its MLP -- the N-wide memory,
    the expensive part -- at ``q``.  :func:`query_logits` runs the earlier blocks in full and the last one
    at the query rows only (a two-layer fine-tune then costs about what a one-layer one does).
    """
    c = model.cfg
    plain = not (c.parallel_attn_mlp or c.use_attn_in or c.use_split_qkv_input or c.use_normalization_before_and_after
                 or getattr(c, "load_in_4bit", False))
    tokenizer = getattr(model, "tokenizer", None)
    left_pad = tokenizer is not None and getattr(tokenizer, "padding_side", "right") == "left"
    return (c.normalization_type is None and c.positional_embedding_type == "standard"
            and c.original_architecture is None and plain and not left_pad
            and c.n_key_value_heads in (None, c.n_heads))


def unembed(model: TLModel, resid: Float[Tensor, "row d_model"]) -> Float[Tensor, "row vocab"]:
    """Logits of final residual rows (unembedding, then the model's logit softcap).

    Without hooks on the unembedding this is ``resid @ W_U + b_U`` directly: TransformerLens's
    ``Unembed`` copies ``W_U.T`` into a contiguous tensor on every call (d_model x vocab floats,
    128 MB per step at 10^6 facts) to match Hugging Face's bfloat16 accumulation order.
    """
    u = model.unembed
    if any(getattr(u, name).fwd_hooks or getattr(u, name).bwd_hooks for name in H.UNEMBED_LEAVES
           if hasattr(u, name)):
        logits = u(resid[:, None])[:, 0]
    else:
        logits = torch.addmm(u.b_U, resid, u.W_U)
    return apply_softcap(logits, model.cfg.output_logits_soft_cap)


def row_logits(model: TLModel, resid_mid: Float[Tensor, "row d_model"]) -> Float[Tensor, "row vocab"]:
    """Logits of residual rows after the last attention: the last block's MLP (unless attention-only), then the
    unembedding."""
    if model.cfg.attn_only:
        return unembed(model, resid_mid)
    mlp_out = model.blocks[-1].mlp(resid_mid[:, None])[:, 0]
    return unembed(model, resid_mid + mlp_out)


def _reassociation_applies(model: TLModel) -> bool:
    """Our own models (a known attention configuration) with no hook on the last attention's hook points."""
    if getattr(model, "icr_config", None) is None or not last_layer_path_applies(model):
        return False
    attn = model.blocks[-1].attn
    return not any(getattr(attn, h).fwd_hooks or getattr(attn, h).bwd_hooks for h in _ATTN_HOOKS if hasattr(attn, h))


def query_attention(model: TLModel, resid: Float[Tensor, "batch pos d_model"], query_pos: Int[Tensor, " batch"]
                    ) -> tuple[Float[Tensor, "batch head pos"], Float[Tensor, "batch d_model"]]:
    """The last layer's query row of every head and its attention output at the query, reassociated.

    ``score_j = (q W_K^T) . x_j`` and ``z = (Σ_j α_j x_j) W_V`` are the same sums as
    ``q . (x_j W_K)`` and ``Σ_j α_j (x_j W_V)`` (the pattern sums to 1, so ``b_V`` passes
    through), but cost ``d_model x d_head`` per *query* instead of per position.
    """
    attn, cfg = model.blocks[-1].attn, model.cfg
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


def _hooked(module) -> bool:
    """Whether any hook point inside ``module`` has a hook."""
    return any(getattr(m, "fwd_hooks", None) or getattr(m, "bwd_hooks", None) for m in module.modules())


def _first_block_from_tables(model: TLModel, tokens: Int[Tensor, "batch pos"]) -> bool:
    """Whether :func:`first_block_output` applies: our model, more than one layer, nothing hooked on the way
    into the first block or inside it, and fewer vocabulary rows than prompt positions in the batch."""
    c = model.cfg
    return (getattr(model, "icr_config", None) is not None and c.n_layers > 1 and c.attention_dir == "causal"
            and c.d_vocab + c.n_ctx < tokens.numel() and not _hooked(model.blocks[0])
            and not any(_hooked(m) for m in (model.hook_embed, model.hook_pos_embed)))


def first_block_output(model: TLModel, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
    """The first block's output at every position, its attention computed from per-token tables.

    The first block reads the embedding ``x = E[t] + P[p]``, so ``x W`` is ``(E W)[t] + (P W)[p]`` for each of
    its attention's maps: ``W_Q``, ``W_K`` and the frozen ``W_V W_O`` are applied to the vocabulary and the
    positions once (``d_vocab + n_ctx`` rows) instead of to every position of every prompt, and the values
    are mixed before ``W_O`` (``Σ_j α_j (v_j W_O)``).  The same sums as the block's own forward, in another order.
    """
    block, cfg = model.blocks[0], model.cfg
    attn, n_pos, pos = block.attn, tokens.shape[1], torch.arange(tokens.shape[1], device=tokens.device)
    table = torch.cat([model.embed.W_E, model.pos_embed.W_pos[:n_pos]])  # [vocab + pos, d_model]
    rows = lambda t: t[:, :cfg.d_vocab][:, tokens] + t[:, cfg.d_vocab:][:, None, pos]  # noqa: E731  [h b p e]
    bias = torch.zeros(table.shape[0], 1, device=table.device)
    bias[cfg.d_vocab:] = 1  # the biases ride on the position rows: every x has exactly one of them
    q = einops.einsum(table, attn.W_Q, "r d, h d e -> h r e") + bias * attn.b_Q[:, None]
    k = einops.einsum(table, attn.W_K, "r d, h d e -> h r e") + bias * attn.b_K[:, None]
    s = einops.einsum(q, k, "h r e, h c e -> h r c")  # every table row's query against every table row's key
    t, p = tokens[:, :, None], cfg.d_vocab + pos  # [b i 1], [i]
    # score(i, j) = (qt[t_i] + qp[i]) . (kt[t_j] + kp[j]): four lookups in s
    scores = (s[:, t, tokens[:, None, :]] + s[:, t, p[None, None, :]] + s[:, p[None, :, None], tokens[:, None, :]]
              + s[:, p[:, None], p[None, :]][:, None])  # [h b i j]
    scores = einops.rearrange(scores, "h b i j -> b h i j")
    vo = _value_table(model, table, bias)
    scores = apply_softcap(scores / attn.attn_scale, cfg.attn_scores_soft_cap)
    future = pos[None, :] > pos[:, None]
    pattern = scores.masked_fill(future, float("-inf")).softmax(-1)  # [b h i j]
    attn_out = einops.einsum(pattern, rows(vo), "b h i j, h b j d -> b i d") + attn.b_O
    resid = model.embed(tokens) + model.pos_embed(tokens)
    resid_mid = resid + attn_out
    return resid_mid if cfg.attn_only else resid_mid + block.mlp(resid_mid)


def _value_table(model: TLModel, table: Float[Tensor, "row d_model"], bias: Float[Tensor, "row 1"]
                 ) -> Float[Tensor, "head row d_model"]:
    """``(table W_V + bias b_V) W_O`` of the first block, kept while its inputs are frozen and unchanged.

    Fine-tuning trains W_Q / W_K only, so this table is the same at every step; it is recomputed whenever a
    weight it reads changes (their version counters) or needs a gradient.
    """
    attn = model.blocks[0].attn
    inputs = (model.embed.W_E, model.pos_embed.W_pos, attn.W_V, attn.b_V, attn.W_O)
    key = (table.shape[0], *((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in inputs))
    cached = getattr(model, "_icr_value_table", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    vo = einops.einsum(einops.einsum(table, attn.W_V, "r d, h d e -> h r e") + bias * attn.b_V[:, None],
                       attn.W_O, "h r e, h e d -> h r d")
    frozen = not (torch.is_grad_enabled() and any(t.requires_grad for t in inputs))
    object.__setattr__(model, "_icr_value_table", (key, vo.detach()) if frozen else None)
    return vo


def query_logits(model: TLModel, tokens: Int[Tensor, "batch pos"], query_pos: Int[Tensor, " batch"],
                 return_pattern: bool = False):
    """Logits at each example's query position, running the last layer there only.

    The earlier blocks run in full (the last layer's keys and values read every position); the last block
    runs its attention's query rows and its MLP at the query only.  Our models with no hook on their last
    attention use :func:`query_attention` (reassociated); other models run their own attention module at
    every position (it is exact for any configuration :func:`last_layer_path_applies` accepts).  Falls back
    to the full forward when :func:`last_layer_path_applies` is false.

    Returns:
        ``[batch vocab]`` logits, and with ``return_pattern`` also the last
        layer's query rows ``[batch head pos]``.
    """
    rows = torch.arange(len(tokens), device=tokens.device)
    query_pos = query_pos.to(tokens.device)
    last = model.cfg.n_layers - 1
    block = model.blocks[-1]
    hooked = any(getattr(block, h).fwd_hooks or getattr(block, h).bwd_hooks for h in _BLOCK_HOOKS if hasattr(block, h))
    if hooked or not last_layer_path_applies(model):
        cache = {}
        name = H.hook(last, "pattern")
        with model.hooks(fwd_hooks=[(name, lambda act, hook: cache.__setitem__("p", act))] if return_pattern else []):
            logits = model(tokens)[rows, query_pos]
        return (logits, cache["p"][rows, :, query_pos]) if return_pattern else logits
    if _first_block_from_tables(model, tokens):
        resid = first_block_output(model, tokens)
        earlier_blocks = model.blocks[1:-1]
    else:
        resid = model.hook_embed(model.embed(tokens)) + model.hook_pos_embed(model.pos_embed(tokens))
        earlier_blocks = model.blocks[:-1]
    for earlier in earlier_blocks:
        resid = earlier(resid)
    if _reassociation_applies(model):
        pattern, attn_out = query_attention(model, resid, query_pos)
    else:
        cache = {}
        with model.hooks(fwd_hooks=[(H.hook(last, "pattern"), lambda act, hook: cache.__setitem__("p", act))]):
            attn_out = model.blocks[-1].attn(query_input=resid, key_input=resid, value_input=resid)[rows, query_pos]
        pattern = cache["p"][rows, :, query_pos]
    logits = row_logits(model, resid[rows, query_pos] + attn_out)
    return (logits, pattern) if return_pattern else logits
