"""Fine-tuning the attention of an IC-recall model, and evaluating it.

What trains is decided here, not by the model builder: for an icr_interp
model, the parameters its config marks trainable (``ModelConfig.trainable``:
attention's ``W_Q``, ``W_K``, ``b_Q``, ``b_K``); for any other
``HookedTransformer``, the same attention query/key weights by default; a
user may pass ``trainable=`` (last components of parameter names) to choose.
Everything else is frozen for the run (``requires_grad`` is restored after).
The training set is exactly ``n_samples`` prompts drawn once, so
``n_samples`` is the *sample complexity* the experiments measure.

The loss reads only the query position, so a one-layer model uses the exact
query-only forward of :mod:`icr_interp.model.forward` (the memory runs at the query
row only); other models take the full forward.
"""

import math
from dataclasses import dataclass, field, replace
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from icr_interp._moved import module_attr
from icr_interp.seeds import offset_seed
from icr_interp.model.attention_params import DEFAULT_LR, DEFAULT_SCHEDULE, logical_name
from icr_interp.task import limits
from icr_interp.task.ceiling import ceiling
from icr_interp.tl.compat import TLModel
from icr_interp.model import hooks as H
from icr_interp.model.forward import last_layer_path_applies, query_logits, query_path_applies, unembed
from icr_interp.model.builder import TRAINABLE
from icr_interp.seeds import SALTS, derive_seed
from icr_interp.task.batch import Batch
from icr_interp.task.protocol import PromptTask

DEFAULT_TRAINABLE = TRAINABLE  # attention query/key (model.py): what the paper fine-tunes, also for foreign models
SCHEDULES = ("constant", "cosine")
__all__ = ["TrainConfig", "History", "finetune", "default_recipe", "evaluate", "batch_logits", "query_logits",
           "prediction_logits", "trainable_names", "trainable_parameters"]


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters (saved in checkpoints)."""

    n_samples: int = 4096  # size of the fixed training set (the sample complexity)
    steps: int = 400  # optimiser steps
    batch_size: int = 64  # prompts per step (capped at n_samples)
    lr: float | None = None  # Adam learning rate; None: the model's attention parametrisation's (DEFAULT_LR)
    # "constant" | "cosine" (lr decays to 0 over the steps); None: constant if lr is given, else DEFAULT_SCHEDULE
    schedule: str | None = None
    weight_decay: float = 0.0  # AdamW weight decay on W_Q / W_K
    seed: int = 0  # seeds the training set and the minibatch order
    fast: bool = True  # run the last layer at the query only (model.forward.last_layer_path_applies)

    def validate(self) -> None:
        """One-line ValueError for a field out of range."""
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES} (or None: the parametrisation's), "
                             f"got {self.schedule!r}")
        for name, low in (("n_samples", 1), ("steps", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            if name == "lr" and value is None:  # resolved by finetune from the model (default_recipe)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass
class History:
    """Per-step training record."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)  # minibatch accuracy

    def to_dict(self) -> dict:
        return dict(step=self.step, loss=self.loss, accuracy=self.accuracy)


def default_recipe(model: TLModel) -> dict:
    """What ``TrainConfig(lr=None, schedule=None)`` resolves to: the model's attention parametrisation's
    (``attention_params.DEFAULT_LR`` / ``DEFAULT_SCHEDULE``: full 0.003 constant, positional 0.1 cosine);
    "full" for a model not built here."""
    attention = getattr(getattr(model, "icr_config", None), "attention", "full")
    return dict(lr=DEFAULT_LR[attention], schedule=DEFAULT_SCHEDULE[attention])


def trainable_names(model: TLModel, trainable: Sequence[str] | None = None) -> list[str]:
    """Names of the parameters fine-tuning trains (see module docstring)."""
    if trainable is None:
        icr_config = getattr(model, "icr_config", None)  # any model: ours carry their own choice
        trainable = icr_config.trainable if icr_config is not None else DEFAULT_TRAINABLE
    names = [n for n, _ in model.named_parameters() if logical_name(n).split(".")[-1] in set(trainable)]
    if not names:
        raise ValueError(f"no parameter of the model is named like {sorted(trainable)}: nothing would train")
    return names


def trainable_parameters(model: TLModel, trainable: Sequence[str] | None = None) -> list[torch.nn.Parameter]:
    params = dict(model.named_parameters())
    return [params[n] for n in trainable_names(model, trainable)]


def batch_logits(model: TLModel, batch: Batch, fast: bool = True) -> Float[Tensor, "batch vocab"]:
    """Logits at the query of every example (the query-only forward, or the full one)."""
    qpos = batch.layout.pred_pos
    if fast:
        return query_logits(model, batch.tokens, qpos)
    return model(batch.tokens)[torch.arange(len(batch), device=qpos.device), qpos]


def finetune(model: TLModel, task: PromptTask, n_samples: int | None = None, steps: int | None = None,
             seed: int | None = None, *, config: TrainConfig | None = None, callback: Callable | None = None,
             progress: bool = True, trainable: Sequence[str] | None = None, **overrides) -> History:
    """Fine-tune attention on a fixed training set of ``n_samples`` prompts.

    Args:
        model: an IC-recall model (``build_model``) or any ``HookedTransformer``; updated in place.
        task: the task to draw the training set from.
        n_samples, steps, seed: override the :class:`TrainConfig` defaults.
        config: a full config (other overrides are applied on top).
        callback: called as ``callback(step, model, history)`` after every step
            (e.g. to score the attention pattern over training).
        progress: show a progress bar.
        trainable: last components of the parameter names to train (default: see module docstring).
        **overrides: any other :class:`TrainConfig` field.

    Returns:
        The per-step :class:`History`; an icr_interp model keeps the config as ``model.icr_train``.
    """
    cfg = config or TrainConfig()
    cfg = replace(cfg, **{k: v for k, v in dict(n_samples=n_samples, steps=steps, seed=seed, **overrides).items()
                          if v is not None})
    # lr left at None: the parametrisation's recipe (lr and schedule); a given lr alone keeps a constant schedule,
    # as every config written before schedules existed meant (so their cached runs stay valid: config.KEY_NEUTRAL)
    recipe = default_recipe(model) if cfg.lr is None else dict(lr=cfg.lr, schedule="constant")
    cfg = replace(cfg, lr=recipe["lr"], schedule=cfg.schedule or recipe["schedule"])
    cfg.validate()
    if not getattr(model, "memory_fitted", True):
        raise ValueError("the pretrained memory has not been fitted: call icr_interp.pretrain_memory(model, task) "
                         "before fine-tuning")
    device = model.cfg.device
    data = task.sample(cfg.n_samples, seed=cfg.seed, device=device)
    gen = torch.Generator().manual_seed(offset_seed(cfg.seed, "minibatch_order"))
    names = set(trainable_names(model, trainable))
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(n in names)  # freezing belongs to training
    params = [p for n, p in model.named_parameters() if n in names]
    # foreach: one kernel per operation over all parameters instead of a Python loop with temporaries
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, cfg.steps)) if cfg.schedule == "cosine" else None
    history = History()
    fast = cfg.fast and last_layer_path_applies(model)  # the last layer at the query only, at any depth
    try:
        for step in tqdm(range(cfg.steps), desc="fine-tune", disable=None if progress else True, leave=False):
            idx = torch.randperm(cfg.n_samples, generator=gen)[: cfg.batch_size].to(device)
            mb = data[idx]
            logits = batch_logits(model, mb, fast=fast)
            loss = F.cross_entropy(logits, mb.answers)
            if not torch.isfinite(loss):
                raise ValueError(f"fine-tuning diverged at step {step} (loss {loss.item()}); lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if decay is not None:
                decay.step()
            history.step.append(step)
            history.loss.append(loss.item())
            history.accuracy.append((logits.argmax(-1) == mb.answers).float().mean().item())
            if callback is not None:
                callback(step, model, history)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(before[n])
    if hasattr(model, "icr_train"):
        model.icr_train = cfg
    return history


@torch.no_grad()
def evaluate(model: TLModel, task: PromptTask, n_prompts: int = 1024, seed: int = 0,
             batch_size: int = 256) -> dict:
    """Held-out accuracy, loss and mean query attention row on fresh prompts.

    Prompts come from ``manual_seed(derive_seed(seed, "eval"))``, a stream
    disjoint from the training sets ``finetune`` draws (they may still repeat a
    training prompt by chance when the task has few distinct prompts).  Only
    the query row is computed where the model allows it (see :mod:`icr_interp.model.forward`).
    Any task works, text prompts for a pretrained LM included
    (:class:`~icr_interp.task.text.TextICRecallTask`): logits are read at each example's prediction
    position (:func:`prediction_logits`); per relation and per k see :mod:`icr_interp.analysis.recall`.

    Returns:
        ``{"accuracy", "loss", "n_prompts", "query_attention", "ceiling"}`` where
        ``query_attention`` is the first head of the last layer's query row
        averaged over prompts (a list over positions) and ``ceiling`` the
        Bayes-optimal accuracy on the same prompts (:mod:`icr_interp.task.ceiling`).
    """
    if not isinstance(n_prompts, int) or n_prompts < 1:
        raise ValueError(f"n_prompts must be a positive integer, got {n_prompts!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = model.cfg.device
    gen = torch.Generator().manual_seed(derive_seed(seed, "eval"))
    correct, loss_sum, rows, best = 0, 0.0, [], 0.0
    for start in range(0, n_prompts, batch_size):
        batch = task.sample(min(batch_size, n_prompts - start), generator=gen, device=device)
        check_prompts(model, batch)
        for part in forward_parts(model, batch):
            logits, pattern = prediction_logits(model, part, return_pattern=True)
            correct += int((logits.argmax(-1) == part.answers).sum())
            loss_sum += float(F.cross_entropy(logits, part.answers, reduction="sum"))
            rows.append(pattern[:, 0])
        best += float(ceiling(task, batch).sum())
    width = max(r.shape[-1] for r in rows)  # text prompts: batches padded to their own length
    rows = [F.pad(r, (0, width - r.shape[-1])) for r in rows]
    return dict(accuracy=correct / n_prompts, loss=loss_sum / n_prompts, n_prompts=n_prompts,
                query_attention=torch.cat(rows).mean(0).tolist(), ceiling=best / n_prompts)


def check_prompts(model: TLModel, batch: Batch) -> None:
    """One line if text prompts do not fit the model: longer than its ``n_ctx``, or token ids (prompt or
    target) past its ``d_vocab`` (a tokenizer of another model).  Toy prompts pass (their ids are the model's)."""
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    if batch.tokens.shape[1] > n_ctx:
        raise ValueError(f"prompts of {batch.tokens.shape[1]} tokens exceed the model's context n_ctx={n_ctx}: "
                         f"use fewer pairs or shorter templates")
    top = max(int(batch.tokens.max()), int(batch.answers.max())) if batch.tokens.numel() else 0
    if top >= d_vocab:
        raise ValueError(f"the prompts use token id {top}, but the model's d_vocab is {d_vocab}: the task's "
                         f"tokenizer does not match the model")


def forward_parts(model: TLModel, batch: Batch) -> list[Batch]:
    """``batch`` in as few parts as fit one forward in memory (:func:`icr_interp.task.limits.forward_bytes`;
    a one-line ValueError if one prompt alone does not): long text prompts are split, toy ones never are."""
    cfg = model.cfg
    size = limits.prompts_per_forward(len(batch), batch.tokens.shape[1], cfg.n_heads, cfg.d_model,
                                      cfg.d_mlp or 4 * cfg.d_model, cfg.d_vocab, "the model's forward")
    return [batch] if size >= len(batch) else [batch[i:i + size] for i in range(0, len(batch), size)]


def prediction_logits(model: TLModel, batch: Batch, return_pattern: bool = False):
    """Logits ``[batch vocab]`` at each example's prediction position (``batch.layout.pred_pos``).

    Our models take :func:`~icr_interp.model.forward.query_logits`; a foreign model (a pretrained LM, whose
    ``[batch pos vocab]`` logits would be large) runs with ``return_type=None`` and unembeds the final
    residual at those rows only.  With ``return_pattern`` also the last layer's prediction rows
    ``[batch head pos]``.
    """
    pred = batch.layout.pred_pos.to(batch.tokens.device)
    if getattr(model, "icr_config", None) is not None or query_path_applies(model):
        return query_logits(model, batch.tokens, pred, return_pattern=return_pattern)
    keep, rows, last = {}, torch.arange(len(batch), device=pred.device), model.cfg.n_layers - 1
    hooks = [(H.hook(last, "resid_post"), lambda act, hook: keep.__setitem__("x", act[rows, pred]))]
    if return_pattern:
        hooks.append((H.hook(last, "pattern"), lambda act, hook: keep.__setitem__("p", act[rows, :, pred])))
    model.run_with_hooks(batch.tokens, return_type=None, fwd_hooks=hooks)
    x = keep["x"]
    if getattr(model, "ln_final", None) is not None:
        x = model.ln_final(x[:, None])[:, 0]
    logits = unembed(model, x)
    return (logits, keep["p"]) if return_pattern else logits


def __getattr__(name: str):
    return module_attr(__name__, name)  # the first release's names (icr_interp._moved)
