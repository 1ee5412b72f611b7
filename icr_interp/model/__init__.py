"""The model layer: a TransformerLens ``HookedTransformer`` with an associative memory attached as its MLP.

:mod:`builder` (``build_model``), :mod:`basis` (the residual-stream geometry), :mod:`attention_params`
(W_Q/W_K parametrisations), :mod:`forward` (the exact query-only forward), :mod:`hooks` (every hook name),
and :mod:`memory` (the memory implementations and their registry).
"""

from icr_interp.model.builder import (  # noqa: F401
    TRAINABLE, ATTENTIONS, STARTS, MAX_LAYERS, ModelConfig, ICRModel, build_model, resolve_config, model_from_config, start_slots,
)
