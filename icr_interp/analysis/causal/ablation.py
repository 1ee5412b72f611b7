"""Ablations: remove a component and measure what the model loses.

Three ways to remove an activation (all applied through TransformerLens hooks):

* **zero** -- set it to 0;
* **mean** -- replace it by its mean over a reference batch (per position),
  keeping the average signal but deleting the example-specific part;
* **resample** -- replace it by the activation of *another* prompt (the batch
  rolled by one), the ablation least likely to push the model off-distribution.

What can be removed: the *values* of the positions holding a role (subjects,
answers, the query, BOS) -- this cuts what attention can copy from them --;
a head's output; the memory's relation vector (stage I) or groups of its
neurons; and the *pattern* itself: restricting the query row to subjects only
or answers only (renormalised) asks which half of each pair the model needs.
Each ablation reports accuracy and loss before and after.

Roles are :mod:`icr_interp.task.roles`'s (``subjects``, ``answers``, ``context``,
``pair_i``, ``query``, ``bos``, ...; the singular ``subject``/``answer`` of
the first release still work, with a DeprecationWarning).  An ablation without
a ``layer`` acts on the last layer (:func:`icr_interp.analysis.scoring.attention.resolve_layer`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.inputs import check_batch
from icr_interp.model import hooks as H
from icr_interp.task import roles
from icr_interp.analysis.scoring.attention import pattern_name, query_row, resolve_layer
from icr_interp.tl.compat import TLModel
from icr_interp.task.batch import Batch

METHODS = ("zero", "mean", "resample")


@dataclass
class AblationResult:
    """Effect of one ablation on the query prediction."""

    name: str  # what was ablated
    method: str  # zero | mean | resample | restrict
    accuracy: float  # accuracy with the ablation
    loss: float  # cross-entropy with the ablation
    base_accuracy: float  # accuracy without it
    base_loss: float  # loss without it

    @property
    def accuracy_drop(self) -> float:
        return self.base_accuracy - self.accuracy

    def to_dict(self) -> dict:
        return dict(name=self.name, method=self.method, accuracy=self.accuracy, loss=self.loss,
                    base_accuracy=self.base_accuracy, base_loss=self.base_loss, accuracy_drop=self.accuracy_drop)


def _query_metrics(model: TLModel, batch: Batch, hooks: list) -> tuple[float, float]:
    """Accuracy and loss at each example's query position under ``hooks``."""
    with torch.no_grad():
        logits = model.run_with_hooks(batch.tokens, fwd_hooks=hooks)
    rows = torch.arange(len(batch), device=logits.device)
    q = logits[rows, batch.layout.pred_pos.to(logits.device)]
    return float((q.argmax(-1) == batch.answers).float().mean()), float(F.cross_entropy(q, batch.answers))


def replacement(act: Tensor, method: str) -> Tensor:
    """The stand-in for ``act`` (batch first) under an ablation method."""
    if method == "zero":
        return torch.zeros_like(act)
    if method == "mean":
        return act.mean(0, keepdim=True).expand_as(act)
    if method == "resample":
        return act.roll(1, dims=0)
    raise ValueError(f"ablation method must be one of {METHODS}, got {method!r}")


def run_ablation(model: TLModel, batch: Batch, name: str, method: str, hooks: list) -> AblationResult:
    """Accuracy and loss on ``batch`` without and with ``hooks`` (the building block of every ablation)."""
    if method not in (*METHODS, "restrict"):
        raise ValueError(f"ablation method must be one of {METHODS}, got {method!r}")
    check_batch(model, batch)
    base_acc, base_loss = _query_metrics(model, batch, [])
    acc, loss = _query_metrics(model, batch, hooks)
    return AblationResult(name, method, acc, loss, base_acc, base_loss)


def _label(role: str) -> str:
    """How a role reads in an ablation's name ("values at subject positions", as in the first release)."""
    return {"subjects": "subject", "answers": "answer"}.get(role, role)


def ablate_role_values(model: TLModel, batch: Batch, role: str, method: str = "mean",
                       layer: int | None = None) -> AblationResult:
    """Ablate the attention values (``hook_v``) of every position holding ``role`` (default layer: the last)."""
    role, layer = roles.canonical(role), resolve_layer(model.cfg.n_layers, layer)
    mask = roles.mask(batch.layout, role, batch.tokens.shape[1])[:, :, None, None]  # [batch pos head d_head]

    def hook(v: Float[Tensor, "batch pos head d_head"], hook) -> Tensor:
        return torch.where(mask.to(v.device), replacement(v, method), v)

    return run_ablation(model, batch, f"values at {_label(role)} positions", method,
                        [(H.hook(layer, "v"), hook)])


def ablate_head(model: TLModel, batch: Batch, layer: int, head: int, method: str = "mean") -> AblationResult:
    """Ablate one head's output (``hook_z``) at every position (``layer`` may count from the end)."""
    layer = resolve_layer(model.cfg.n_layers, layer)

    def hook(z: Float[Tensor, "batch pos head d_head"], hook) -> Tensor:
        z = z.clone()
        z[:, :, head] = replacement(z[:, :, head], method)
        return z

    return run_ablation(model, batch, f"head L{layer}H{head}", method, [(H.hook(layer, "z"), hook)])


def ablate_hook(model: TLModel, batch: Batch, hook_name: str, method: str = "mean",
                index: Tensor | slice | None = None) -> AblationResult:
    """Ablate a whole activation (e.g. ``hook(layer, "relation")``, :mod:`icr_interp.model.hooks`) or the last-axis ``index`` of it.

    With ``index`` a set of neurons of ``hook_post`` / ``hook_rel_post`` is ablated.
    """
    if hook_name not in model.hook_dict:
        raise ValueError(f"unknown hook {hook_name!r}")
    sel = slice(None) if index is None else index

    def hook(act: Tensor, hook) -> Tensor:
        act = act.clone()
        act[..., sel] = replacement(act[..., sel], method)
        return act

    label = hook_name if index is None else f"{hook_name}[{_describe(index)}]"
    return run_ablation(model, batch, label, method, [(hook_name, hook)])


def restrict_pattern(model: TLModel, batch: Batch, keep: tuple[str, ...],
                     layer: int | None = None) -> AblationResult:
    """Let the query attend only to positions of the roles in ``keep`` (renormalised), every head.

    Default layer: the last (:func:`icr_interp.analysis.scoring.attention.resolve_layer`).
    """
    keep = tuple(roles.canonical(r) for r in keep)
    layer = resolve_layer(model.cfg.n_layers, layer)
    n_pos = batch.tokens.shape[1]
    allowed = torch.zeros(len(batch), n_pos, dtype=torch.bool, device=batch.tokens.device)
    for role in keep:
        allowed |= roles.mask(batch.layout, role, n_pos)
    rows = torch.arange(len(batch), device=batch.tokens.device)

    def hook(pattern: Float[Tensor, "batch head dest src"], hook) -> Tensor:
        pattern = pattern.clone()
        q_row = query_row(pattern, batch.layout.pred_pos) * allowed[:, None, :].to(pattern.device)
        pattern[rows.to(pattern.device), :, batch.layout.pred_pos.to(pattern.device)] = \
            q_row / q_row.sum(-1, keepdim=True).clamp_min(1e-12)
        return pattern

    return run_ablation(model, batch, f"query attends to {'+'.join(_label(r) for r in keep)} only", "restrict",
                        [(pattern_name(layer), hook)])


def standard_ablations(model: TLModel, batch: Batch, method: str = "mean",
                       layer: int | None = None) -> list[AblationResult]:
    """The ablations that separate relation inference from answer lookup (default layer: the last)."""
    check_batch(model, batch)
    layer = resolve_layer(model.cfg.n_layers, layer)
    results = [ablate_role_values(model, batch, role, method, layer) for role in ("subjects", "answers", "query")]
    results += [restrict_pattern(model, batch, keep, layer)
                for keep in (("subjects",), ("answers",), ("subjects", "answers"))]
    results += [ablate_head(model, batch, layer, h, method) for h in range(model.cfg.n_heads)]
    mlp = H.hook(layer, "relation")
    if mlp in model.hook_dict:
        results.append(ablate_hook(model, batch, mlp, method))
    return results


def format_table(results: list[AblationResult]) -> str:
    """A readable table of ablation results."""
    lines = [f"{'ablation':<42} {'method':<9} {'acc':>6} {'Δacc':>7} {'loss':>8}"]
    for r in results:
        lines.append(f"{r.name:<42} {r.method:<9} {r.accuracy:6.3f} {-r.accuracy_drop:+7.3f} {r.loss:8.3f}")
    return "\n".join(lines)


def _describe(index) -> str:
    if isinstance(index, slice):
        return f"{index.start}:{index.stop}"
    return f"{len(index)} neurons"



def __getattr__(name: str):
    from icr_interp._moved import module_attr

    return module_attr(__name__, name)  # role_mask: icr_interp.task.roles.mask (icr_interp._moved)
