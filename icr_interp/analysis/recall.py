"""Recall against the number of context pairs, per relation, beside the baselines.

In-context factual recall has two baselines a model's k-shot accuracy should be read against:

* **zero-shot** (k = 0): the query alone (``"Japan:"``) -- what the model guesses without being shown the
  relation;
* **named relation**: the model's own factual recall with the relation spelled out (``"The capital of
  Japan is"``), the ceiling of what inferring the relation from the context can give, since the facts
  themselves come from the model's weights.

:func:`recall_curve` measures top-1 accuracy and cross-entropy of the target at the prediction position for
every k in ``ks``, overall and per relation, and the named-relation baseline when the task has one
(:meth:`~icr_interp.task.text.TextICRecallTask.named_relation_batch`).  Prompts for each k come from the
evaluation stream of :func:`~icr_interp.training.trainer.evaluate` (``derive_seed(seed, "eval")``).  A relation
without a phrase has no named baseline: ``RecallCurve.unnamed`` lists them, the printed table says so, and one
warning names them.

Example::

    curve = recall_curve(model, TextICRecallTask(kb, model), ks=range(9))
    print(curve)    # accuracy by k, per relation, and the named-relation baseline
"""

from dataclasses import dataclass, field
from collections.abc import Iterable

import warnings

import torch
import torch.nn.functional as F

from icr_interp.plumbing import check_int
from icr_interp.seeds import derive_seed
from icr_interp.task.batch import Batch
from icr_interp.task.prompts import ICRecallTask
from icr_interp.task.protocol import PromptTask
from icr_interp.tl.compat import TLModel
from icr_interp.training.trainer import check_prompts, forward_parts, prediction_logits


@dataclass(frozen=True)
class RecallScores:
    """Accuracy and loss of one set of prompts, overall and per relation."""

    accuracy: float  # top-1 accuracy of the target at the prediction position
    loss: float  # mean cross-entropy of the target
    n_prompts: int
    per_relation: dict = field(default_factory=dict)  # relation name -> {"accuracy", "loss", "n_prompts"}

    def to_dict(self) -> dict:
        return dict(accuracy=self.accuracy, loss=self.loss, n_prompts=self.n_prompts,
                    per_relation={k: dict(v) for k, v in self.per_relation.items()})


@dataclass(frozen=True)
class RecallCurve:
    """:class:`RecallScores` for every k, and the named-relation baseline (None without phrases)."""

    by_k: dict  # k -> RecallScores (k = 0: zero-shot)
    named: RecallScores | None  # the relation named in words (the ceiling of in-context inference)
    unnamed: tuple = ()  # relations without a phrase: no named baseline for them

    @property
    def zero_shot(self) -> RecallScores | None:
        return self.by_k.get(0)

    def to_dict(self) -> dict:
        return dict(by_k={str(k): v.to_dict() for k, v in self.by_k.items()},
                    named=None if self.named is None else self.named.to_dict(), unnamed=list(self.unnamed))

    def __str__(self) -> str:
        relations = sorted({r for s in self.by_k.values() for r in s.per_relation})
        head = f"  {'k':>5} {'acc':>6} {'loss':>6} " + " ".join(f"{r[:12]:>12}" for r in relations)
        lines = ["RecallCurve: top-1 accuracy of the target at the prediction position (per relation right)", head]
        rows = [(str(k), s) for k, s in self.by_k.items()] + ([("named", self.named)] if self.named else [])
        for label, s in rows:
            cells = " ".join(f"{s.per_relation[r]['accuracy']:12.3f}" if r in s.per_relation else f"{'-':>12}"
                             for r in relations)
            lines.append(f"  {label:>5} {s.accuracy:6.3f} {s.loss:6.3f} {cells}")
        if self.unnamed:
            lines.append(f"  no named baseline for {', '.join(self.unnamed)} (no relation phrase)")
        return "\n".join(lines)

    __repr__ = __str__


@torch.no_grad()
def score_batches(model: TLModel, batches: Iterable[Batch], relation_names) -> RecallScores:
    """Accuracy and loss over ``batches``, overall and per relation (``relation_names[id]``)."""
    correct, loss, count = {}, {}, {}
    for whole in batches:
        check_prompts(model, whole)
        for batch in forward_parts(model, whole):
            logits = prediction_logits(model, batch.to(model.cfg.device)).float()
            answers = batch.answers.to(logits.device)
            hit = (logits.argmax(-1) == answers).cpu()
            ce = F.cross_entropy(logits, answers, reduction="none").cpu()
            for r, h, c in zip(batch.relations.tolist(), hit.tolist(), ce.tolist()):
                correct[r], loss[r], count[r] = correct.get(r, 0) + h, loss.get(r, 0.0) + c, count.get(r, 0) + 1
    n = sum(count.values())
    if n == 0:
        raise ValueError("no prompts to score")
    per = {relation_names[r]: dict(accuracy=correct[r] / count[r], loss=loss[r] / count[r], n_prompts=count[r])
           for r in sorted(count)}
    return RecallScores(sum(correct.values()) / n, sum(loss.values()) / n, n, per)


def recall_curve(model: TLModel, task: PromptTask, ks: Iterable[int] = range(9), n_prompts: int = 256,
                 seed: int = 0, batch_size: int = 64, named: bool = True) -> RecallCurve:
    """Accuracy and loss for every k in ``ks`` (0: zero-shot), per relation, and the named-relation baseline.

    Args:
        model: any ``HookedTransformer`` (a pretrained LM with a text task, or a toy model).
        task: a :class:`~icr_interp.task.text.TextICRecallTask` (any k, its templates kept) or a toy
            :class:`ICRecallTask` (k >= 1).
        ks: numbers of context pairs.
        n_prompts: prompts per k (and for the named baseline).
        seed: evaluation seed (the stream of :func:`~icr_interp.training.trainer.evaluate`).
        batch_size: prompts per forward.
        named: also measure the named-relation baseline (text tasks with relation phrases).
    """
    check_int(n_prompts, "n_prompts", 1)
    check_int(batch_size, "batch_size", 1)
    names = task.kb.relations
    by_k = {}
    for k in ks:
        check_int(k, "k", 0)
        sub = task.with_pairs(k) if hasattr(task, "with_pairs") else ICRecallTask(task.kb, k, task.bos)
        by_k[k] = score_batches(model, _stream(sub.sample, n_prompts, seed, batch_size), names)
    baseline, unnamed = None, ()
    if named and getattr(task, "relation_phrases", None) is not None:
        unnamed = tuple(getattr(task, "unnamed", ()))
        if unnamed:
            warnings.warn(f"no named baseline for {len(unnamed)} relation(s) without a phrase: {', '.join(unnamed)} "
                          f"(pass relation_phrases={{relation: '... {{s}} ...'}})", UserWarning, stacklevel=2)
        if task.relation_phrases:
            baseline = score_batches(model, _stream(task.named_relation_batch, n_prompts, seed, batch_size), names)
    return RecallCurve(by_k, baseline, unnamed)


def _stream(sample, n_prompts: int, seed: int, batch_size: int):
    gen = torch.Generator().manual_seed(derive_seed(seed, "eval"))
    for start in range(0, n_prompts, batch_size):
        yield sample(min(batch_size, n_prompts - start), generator=gen)
