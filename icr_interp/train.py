"""Fine-tuning the attention of an IC-recall model, and evaluating it.

Only the attention's query/key weights train (``model.TRAINABLE``); the
embeddings, the OV copy map, the unembedding and the memory stay frozen, as in
the paper's setting.  The training set is exactly ``n_samples`` prompts drawn
once, so ``n_samples`` is the *sample complexity* the experiments measure.

Fast path: in a one-layer model the loss reads only the query position, and
the query's residual depends on the other positions only through attention's
values.  :func:`query_logits` computes the query row of attention and runs the
memory at the query only -- the same numbers as the full ``HookedTransformer``
forward (a test checks loss and gradients), at a fraction of the cost.
"""

from dataclasses import dataclass, field
from typing import Callable

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens import HookedTransformer

from icr_interp.task import Batch, ICRecallTask


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters (saved in checkpoints)."""

    n_samples: int = 4096  # size of the fixed training set (the sample complexity)
    steps: int = 400  # optimiser steps
    batch_size: int = 64  # prompts per step (capped at n_samples)
    lr: float = 0.003  # Adam learning rate (larger steps move a d_model x d_model W_QK too far)
    weight_decay: float = 0.0  # AdamW weight decay on W_Q / W_K
    seed: int = 0  # seeds the training set and the minibatch order
    fast: bool = True  # use the query-only forward when the model has one layer


@dataclass
class History:
    """Per-step training record."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # minibatch accuracy

    def to_dict(self) -> dict:
        return dict(step=self.step, loss=self.loss, accuracy=self.accuracy)


def trainable_parameters(model: HookedTransformer) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def query_logits(model: HookedTransformer, tokens: Int[Tensor, "batch pos"],
                 query_pos: Int[Tensor, " batch"]) -> Float[Tensor, "batch vocab"]:
    """Logits at each example's query position, computing only what they depend on.

    Exact for one-layer attention + MLP models without normalisation; other
    models fall back to the full forward.
    """
    rows = torch.arange(len(tokens), device=tokens.device)
    if model.cfg.n_layers != 1 or model.cfg.normalization_type is not None:
        return model(tokens)[rows, query_pos]
    attn = model.blocks[0].attn
    resid = model.embed(tokens) + model.pos_embed(tokens)  # [batch pos d_model]
    q = einops.einsum(resid[rows, query_pos], attn.W_Q, "b d, h d e -> b h e") + attn.b_Q
    k = einops.einsum(resid, attn.W_K, "b p d, h d e -> b p h e") + attn.b_K
    scores = einops.einsum(q, k, "b h e, b p h e -> b h p") / attn.attn_scale
    future = torch.arange(tokens.shape[1], device=tokens.device)[None, :] > query_pos[:, None]
    pattern = scores.masked_fill(future[:, None, :], float("-inf")).softmax(-1)
    v = einops.einsum(resid, attn.W_V, "b p d, h d e -> b p h e") + attn.b_V
    z = einops.einsum(pattern, v, "b h p, b p h e -> b h e")
    attn_out = einops.einsum(z, attn.W_O, "b h e, h e d -> b d") + attn.b_O
    resid_mid = resid[rows, query_pos] + attn_out
    resid_post = resid_mid + model.blocks[0].mlp(resid_mid[:, None, :])[:, 0]
    return resid_post @ model.unembed.W_U + model.unembed.b_U


def batch_logits(model: HookedTransformer, batch: Batch, fast: bool = True) -> Float[Tensor, "batch vocab"]:
    """Logits at the query of every example (fast path or the full forward)."""
    qpos = batch.layout.query_pos
    if fast:
        return query_logits(model, batch.tokens, qpos)
    return model(batch.tokens)[torch.arange(len(batch), device=qpos.device), qpos]


def finetune(model: HookedTransformer, task: ICRecallTask, n_samples: int | None = None, steps: int | None = None,
             seed: int | None = None, *, config: TrainConfig | None = None, callback: Callable | None = None,
             progress: bool = True, **overrides) -> History:
    """Fine-tune attention on a fixed training set of ``n_samples`` prompts.

    Args:
        model: an IC-recall model (``build_model``); updated in place.
        task: the task to draw the training set from.
        n_samples, steps, seed: override the :class:`TrainConfig` defaults.
        config: a full config (other overrides are applied on top).
        callback: called as ``callback(step, model, history)`` after every step
            (e.g. to score the attention pattern over training).
        progress: show a progress bar.
        **overrides: any other :class:`TrainConfig` field.

    Returns:
        The per-step :class:`History`; ``model.icr_train`` keeps the config.
    """
    cfg = config or TrainConfig()
    cfg = TrainConfig(**{**cfg.__dict__, **{k: v for k, v in dict(n_samples=n_samples, steps=steps, seed=seed,
                                                                 **overrides).items() if v is not None}})
    if cfg.n_samples < 1 or cfg.steps < 0 or cfg.batch_size < 1:
        raise ValueError("n_samples and batch_size must be >= 1 and steps >= 0")
    device = model.W_E.device
    data = task.sample(cfg.n_samples, seed=cfg.seed, device=device)
    gen = torch.Generator().manual_seed(cfg.seed + 7919)
    opt = torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history = History()
    fast = cfg.fast and model.cfg.n_layers == 1
    for step in tqdm(range(cfg.steps), desc="fine-tune", disable=None if progress else True, leave=False):
        idx = torch.randperm(cfg.n_samples, generator=gen)[: cfg.batch_size].to(device)
        mb = data[idx]
        logits = batch_logits(model, mb, fast=fast)
        loss = F.cross_entropy(logits, mb.answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.step.append(step)
        history.loss.append(loss.item())
        history.accuracy.append((logits.argmax(-1) == mb.answers).float().mean().item())
        if callback is not None:
            callback(step, model, history)
    model.icr_train = cfg
    return history


# Evaluation draws from a salted stream, so evaluate(seed=s) never replays the
# training set of finetune(seed=s) (whose prompts come from manual_seed(s)).
EVAL_SALT = 0x5EED_0000_0000


@torch.no_grad()
def evaluate(model: HookedTransformer, task: ICRecallTask, n_prompts: int = 1024, seed: int = 0,
             batch_size: int = 256) -> dict:
    """Held-out accuracy, loss and mean query attention row on fresh prompts.

    Prompts come from ``manual_seed(seed ^ EVAL_SALT)``, a stream disjoint from
    the training sets ``finetune`` draws (they may still repeat a training
    prompt by chance when the task has few distinct prompts).

    Returns:
        ``{"accuracy", "loss", "n_prompts", "query_attention"}`` where
        ``query_attention`` is the first head of the last layer's query row
        averaged over prompts (a list over positions).
    """
    device = model.W_E.device
    gen = torch.Generator().manual_seed(seed ^ EVAL_SALT)
    correct, loss_sum, rows = 0, 0.0, []
    for start in range(0, n_prompts, batch_size):
        batch = task.sample(min(batch_size, n_prompts - start), generator=gen, device=device)
        logits, cache = model.run_with_cache(batch.tokens, names_filter=lambda n: n.endswith("hook_pattern"))
        logits = logits[torch.arange(len(batch), device=device), batch.layout.query_pos]
        correct += int((logits.argmax(-1) == batch.answers).sum())
        loss_sum += float(F.cross_entropy(logits, batch.answers, reduction="sum"))
        pattern = cache[f"blocks.{model.cfg.n_layers - 1}.attn.hook_pattern"][:, 0]
        rows.append(pattern[torch.arange(len(batch), device=device), batch.layout.query_pos])
    return dict(accuracy=correct / n_prompts, loss=loss_sum / n_prompts, n_prompts=n_prompts,
                query_attention=torch.cat(rows).mean(0).tolist())
