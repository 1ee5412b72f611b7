"""Drop-in equivalents of ``transformer_lens.patching``'s ``get_act_patch_*`` functions.

Same arguments, same output shape, same values (the tests check equality with
TransformerLens), but each grid is one call of :func:`~icr_interp.analysis.causal.patching.engine.patch_activations`:
patched copies stacked along the batch, and only what a patch changes
recomputed, instead of one forward pass (and one ``.item()``) per cell.
``**options`` go to ``patch_activations`` (``fast``, ``max_rows``, ``base_run``...).
"""

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icr_interp.model import hooks as H
from icr_interp.tl.compat import TLModel
from icr_interp.analysis.causal.patching.core import Patch, Source
from icr_interp.analysis.causal.patching.engine import patch_activations
from icr_interp.analysis.causal.patching.metrics import Metric
from icr_interp.task.tokens import check_model_tokens


def _grid(model: TLModel, corrupted_tokens: Tensor, clean_cache: Source, metric: Metric,
          patches: list[Patch], shape: tuple, **options) -> Tensor:
    values = patch_activations(model, corrupted_tokens, clean_cache, patches, metric, **options)
    return values.reshape(*shape, *values.shape[1:])


def _onehot(n: int, i: int, device) -> Bool[Tensor, "1 pos"]:
    return (torch.arange(n, device=device) == i)[None]


def _layer_pos(act: str, model: TLModel, corrupted_tokens: Tensor, clean_cache: Source,
               metric: Metric, **options) -> Float[Tensor, "layer pos"]:
    check_model_tokens(model, corrupted_tokens, "corrupted_tokens")
    n_pos, dev = corrupted_tokens.shape[-1], corrupted_tokens.device
    patches = [Patch(H.hook(layer, act), _onehot(n_pos, pos, dev))
               for layer in range(model.cfg.n_layers) for pos in range(n_pos)]
    return _grid(model, corrupted_tokens, clean_cache, metric, patches, (model.cfg.n_layers, n_pos), **options)


def get_act_patch_resid_pre(model: TLModel, corrupted_tokens: Int[Tensor, "batch pos"],
                            clean_cache: Source, patching_metric: Metric, **options) -> Float[Tensor, "layer pos"]:
    """Patch the residual stream at the start of each block, by position: ``[n_layers, pos]``.

    Same arguments and values as ``transformer_lens.patching.get_act_patch_resid_pre``;
    ``**options`` go to :func:`patch_activations` (``fast``, ``max_rows``, ...).
    """
    return _layer_pos("resid_pre", model, corrupted_tokens, clean_cache, patching_metric, **options)


def get_act_patch_attn_out(model: TLModel, corrupted_tokens: Int[Tensor, "batch pos"],
                           clean_cache: Source, patching_metric: Metric, **options) -> Float[Tensor, "layer pos"]:
    """Patch each attention layer's output, by position: ``[n_layers, pos]`` (as ``transformer_lens``)."""
    return _layer_pos("attn_out", model, corrupted_tokens, clean_cache, patching_metric, **options)


def get_act_patch_mlp_out(model: TLModel, corrupted_tokens: Int[Tensor, "batch pos"],
                          clean_cache: Source, patching_metric: Metric, **options) -> Float[Tensor, "layer pos"]:
    """Patch each MLP layer's output, by position: ``[n_layers, pos]`` (as ``transformer_lens``)."""
    return _layer_pos("mlp_out", model, corrupted_tokens, clean_cache, patching_metric, **options)


def get_act_patch_attn_head_out_by_pos(model: TLModel, corrupted_tokens: Int[Tensor, "batch pos"],
                                       clean_cache: Source, patching_metric: Metric, *,
                                       layers: Sequence[int] | None = None,
                                       **options) -> Float[Tensor, "layer pos head"]:
    """Patch each head's output ``z``, by position: ``[n_layers, pos, n_heads]`` (as ``transformer_lens``).

    ``layers`` restricts the grid to some layers (the others are NaN).
    """
    check_model_tokens(model, corrupted_tokens, "corrupted_tokens")
    n_pos, dev, c = corrupted_tokens.shape[-1], corrupted_tokens.device, model.cfg
    layers = list(range(c.n_layers)) if layers is None else list(layers)
    patches = [Patch(H.hook(layer, "z"), _onehot(n_pos, pos, dev), head=h)
               for layer in layers for pos in range(n_pos) for h in range(c.n_heads)]
    values = _grid(model, corrupted_tokens, clean_cache, patching_metric, patches, (len(layers), n_pos, c.n_heads),
                   **options)
    if len(layers) == c.n_layers and layers == list(range(c.n_layers)):
        return values
    out = values.new_full((c.n_layers, *values.shape[1:]), float("nan"))
    out[torch.tensor(layers, device=out.device)] = values
    return out


def get_act_patch_attn_head_pattern_dest_src_pos(model: TLModel, corrupted_tokens: Int[Tensor, "batch pos"],
                                                 clean_cache: Source, patching_metric: Metric,
                                                 **options) -> Float[Tensor, "layer head dest_pos src_pos"]:
    """Patch each (destination, source) attention-pattern entry of each head: ``[n_layers, n_heads, pos, pos]``."""
    check_model_tokens(model, corrupted_tokens, "corrupted_tokens")
    n_pos, dev, c = corrupted_tokens.shape[-1], corrupted_tokens.device, model.cfg
    patches = [Patch(H.hook(layer, "pattern"), _onehot(n_pos, d, dev), head=h, src=_onehot(n_pos, s, dev))
               for layer in range(c.n_layers) for h in range(c.n_heads) for d in range(n_pos) for s in range(n_pos)]
    return _grid(model, corrupted_tokens, clean_cache, patching_metric, patches, (c.n_layers, c.n_heads, n_pos, n_pos),
                 **options)
