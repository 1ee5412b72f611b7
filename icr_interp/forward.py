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

import torch
from jaxtyping import Float, Int
from torch import Tensor

from icr_interp.compat import TLModel, apply_softcap


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
    """Logits of final residual rows (unembedding, then the model's logit softcap)."""
    return apply_softcap(model.unembed(resid[:, None]), model.cfg.output_logits_soft_cap)[:, 0]


def row_logits(model: TLModel, resid_mid: Float[Tensor, "row d_model"]) -> Float[Tensor, "row vocab"]:
    """Logits of residual rows after attention: the block's MLP (unless attention-only), then the unembedding."""
    if model.cfg.attn_only:
        return unembed(model, resid_mid)
    mlp_out = model.blocks[0].mlp(resid_mid[:, None])[:, 0]
    return unembed(model, resid_mid + mlp_out)


def query_logits(model: TLModel, tokens: Int[Tensor, "batch pos"],
                 query_pos: Int[Tensor, " batch"]) -> Float[Tensor, "batch vocab"]:
    """Logits at each example's query position, running the MLP there only.

    Attention runs at every position (it is cheap: ``pos x pos`` per head);
    the MLP and the unembedding run at the query rows only.  Falls back to
    the full forward when :func:`query_path_applies` is false.
    """
    rows = torch.arange(len(tokens), device=tokens.device)
    query_pos = query_pos.to(tokens.device)
    if not query_path_applies(model):
        return model(tokens)[rows, query_pos]
    resid = model.hook_embed(model.embed(tokens)) + model.hook_pos_embed(model.pos_embed(tokens))
    attn_out = model.blocks[0].attn(query_input=resid, key_input=resid, value_input=resid)[rows, query_pos]
    return row_logits(model, resid[rows, query_pos] + attn_out)
