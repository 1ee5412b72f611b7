"""Reading attention: the prediction row of every head, and the one default layer.

The analyses of this package look at one attention row per prompt: the row of
the position whose logits predict the answer (``batch.layout.pred_pos``: the
query itself in the toy prompts, the separator after the query subject in text
prompts), which is where the model gathers the context it needs to answer.  The
functions keep their first names (``query_row``, ``query_rows``).  This module is the only place that
extracts that row, and the only place that decides which layer an analysis
reads when none is given: the **last** one (the layer whose MLP holds the
memory).  Negative layers count from the end, as in Python.
"""

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from icr_interp.model import hooks as H
from icr_interp.tl.compat import TLModel
from icr_interp.task.batch import Batch


def resolve_layer(n_layers: int, layer: int | None = None) -> int:
    """The layer index an analysis reads: ``layer`` (negative from the end) or, by default, the last."""
    if layer is None:
        return n_layers - 1
    if not isinstance(layer, int) or isinstance(layer, bool) or not -n_layers <= layer < n_layers:
        raise ValueError(f"layer must be an integer in [{-n_layers}, {n_layers}) for a {n_layers}-layer model, "
                         f"got {layer!r}")
    return layer % n_layers


def pattern_name(layer: int) -> str:
    """TransformerLens's name of a layer's attention pattern hook."""
    return H.hook(layer, "pattern")


def query_row(pattern: Float[Tensor, "batch head dest src"],
              query_pos: Int[Tensor, " batch"]) -> Float[Tensor, "batch head src"]:
    """Each example's attention row at its own query position."""
    examples = torch.arange(pattern.shape[0], device=pattern.device)
    return pattern[examples, :, query_pos.to(pattern.device)]


def query_rows_from_cache(cache, query_pos: Int[Tensor, " batch"],
                          n_layers: int) -> Float[Tensor, "layer head batch pos"]:
    """Every layer's query rows from a cache holding each layer's ``hook_pattern``."""
    rows = torch.stack([query_row(cache[pattern_name(layer)], query_pos) for layer in range(n_layers)])
    return einops.rearrange(rows, "layer batch head src -> layer head batch src")


def query_rows(model: TLModel, batch: Batch) -> Float[Tensor, "layer head batch pos"]:
    """Every head's attention row at each example's prediction position (one forward, patterns only).

    Returns:
        ``rows[l, h, b, src]``: attention of layer ``l``, head ``h`` from the
        query of example ``b`` to position ``src`` (on the model's device).
    """
    device = model.cfg.device
    names = {pattern_name(layer) for layer in range(model.cfg.n_layers)}
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens.to(device), names_filter=lambda name: name in names)
    return query_rows_from_cache(cache, batch.layout.pred_pos, model.cfg.n_layers)
