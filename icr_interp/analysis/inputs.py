"""The one check of an analysis's input batch against its model, before any forward pass.

Every analysis entry point (template scores, role patching, ablations, the circuit summary) calls
:func:`check_batch`, so a bad batch fails the same way everywhere: one line, before any work, instead of a NaN
score from an empty batch or an IndexError deep inside a gather. It checks that

* the batch is not empty (an empty batch averages to NaN);
* token ids and targets lie in the model's vocabulary, and the prompts fit its context;
* every position the layout names (span starts and ends, query, BOS, prediction) lies inside the prompts.
"""

from dataclasses import fields

from icr_interp.task.batch import Batch
from icr_interp.task.tokens import check_model_tokens, check_token_ids
from icr_interp.tl.compat import TLModel


def check_batch(model: TLModel, batch: Batch, what: str = "batch") -> Batch:
    """``batch`` if an analysis of ``model`` can read it; a one-line ValueError naming ``what`` otherwise."""
    if len(batch) == 0:
        raise ValueError(f"{what} is empty: sample at least one prompt")
    check_model_tokens(model, batch.tokens, f"{what} tokens")
    check_token_ids(batch.answers, model.cfg.d_vocab, f"{what} answers")
    n_pos = batch.tokens.shape[1]
    for field in fields(batch.layout):
        positions = getattr(batch.layout, field.name)
        if positions is None or not positions.numel():
            continue
        if positions.shape[0] != len(batch):
            raise ValueError(f"{what} layout.{field.name} has {positions.shape[0]} rows for {len(batch)} prompts")
        allowed_absent = field.name == "bos_pos"  # -1: no BOS
        low = int(positions.min())
        if int(positions.max()) >= n_pos or (low < 0 and not (allowed_absent and low == -1)):
            raise ValueError(f"{what} layout.{field.name} points outside the {n_pos}-token prompts "
                             f"(positions {low}..{int(positions.max())}): tokens and layout do not match")
    return batch
