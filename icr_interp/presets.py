"""Named configurations of the whole pipeline, kept in one place.

A preset fixes everything but the seed: the knowledge base
(:meth:`KnowledgeBase.random`), the task (number of context pairs), the model
(which memory, residual width) and the fine-tuning budget.  The seed then
picks one instance: it seeds the knowledge base and the model (basis,
attention initialisation and, for a pretrained memory, its fitting).

* ``paper``      -- the reference configuration (docs/theory.md): shared answers,
  bijective relations, k = 4, constructed memory.
* ``control``    -- as ``paper`` with disjoint answer sets: an answer alone
  reveals the relation, so attention should go to answers only.
* ``pretrained`` -- as ``paper`` with the memory fitted by gradient descent
  (:mod:`icr_interp.pretrain`) instead of written down.
* ``tiny``       -- a few facts and k = 2, for tests.
"""

from dataclasses import dataclass, replace

import torch
from transformer_lens import HookedTransformer

from icr_interp.knowledge import KnowledgeBase
from icr_interp.model import build_model
from icr_interp.task import ICRecallTask


@dataclass(frozen=True)
class Preset:
    """Everything a run needs besides the seed."""

    name: str  # how the CLI and checkpoints refer to it
    description: str  # one line, shown by `icr-interp presets`
    # knowledge base (KnowledgeBase.random)
    n_subjects: int  # subjects
    n_relations: int  # relations
    n_answers: int  # answers
    answer_overlap: float = 1.0  # 1.0 shared answer set, 0.0 disjoint sets
    mapping: str = "balanced"  # balanced (bijective when n_answers == n_subjects) | random
    # task (ICRecallTask)
    n_pairs: int = 4  # context pairs k per prompt
    # model (build_model)
    memory: str = "constructed"  # constructed | pair | answer | pretrained
    d_model: int | None = None  # residual width; None = smallest exact basis
    # fine-tuning (train.finetune); None = the TrainConfig default
    n_samples: int | None = None  # size of the fixed training set
    steps: int | None = None  # optimiser steps
    lr: float | None = None  # Adam learning rate

    def kb_args(self) -> dict:
        """Keyword arguments of :meth:`KnowledgeBase.random` (without the seed)."""
        return dict(n_subjects=self.n_subjects, n_relations=self.n_relations, n_answers=self.n_answers,
                    answer_overlap=self.answer_overlap, mapping=self.mapping)

    def task_args(self) -> dict:
        """Keyword arguments of :class:`ICRecallTask` (besides the knowledge base)."""
        return dict(n_pairs=self.n_pairs)

    def model_args(self) -> dict:
        """Keyword arguments of :func:`build_model` (without the seed)."""
        return dict(memory=self.memory, d_model=self.d_model)

    def finetune_args(self) -> dict:
        """Keyword arguments of :func:`icr_interp.train.finetune` the preset sets."""
        return {k: v for k, v in dict(n_samples=self.n_samples, steps=self.steps, lr=self.lr).items() if v is not None}

    def summary(self) -> str:
        """One line saying what the preset builds."""
        n_facts = self.n_subjects * self.n_relations
        answers = {1.0: "shared by all relations", 0.0: "disjoint per relation"}.get(
            self.answer_overlap, f"overlap {self.answer_overlap:g}")
        return (f"{self.name}: {self.n_subjects} subjects x {self.n_relations} relations = {n_facts} facts, "
                f"{self.n_answers} answers {answers} ({self.mapping}), k={self.n_pairs} pairs, "
                f"{self.memory} memory")


_PAPER = Preset(
    name="paper",
    description="reference: 64 subjects, 8 relations, 64 shared answers (bijective), k=4, constructed memory",
    n_subjects=64, n_relations=8, n_answers=64, answer_overlap=1.0, mapping="balanced", n_pairs=4,
    memory="constructed", n_samples=2048, steps=200, lr=0.003,
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _PAPER,
        replace(_PAPER, name="control", answer_overlap=0.0,
                description="as paper but each relation has its own answers: one answer reveals the relation"),
        replace(_PAPER, name="pretrained", memory="pretrained",
                description="as paper but the memory is pretrained on factual recall instead of constructed"),
        Preset(name="tiny", description="for tests: 16 subjects, 4 relations, 16 shared answers, k=2",
               n_subjects=16, n_relations=4, n_answers=16, n_pairs=2, n_samples=256, steps=50, lr=0.01),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ValueError listing the valid names otherwise."""
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def build_from_preset(name: str | Preset, seed: int = 0,
                      device: str | torch.device = "cpu") -> tuple[KnowledgeBase, ICRecallTask, HookedTransformer]:
    """Build the knowledge base, task and (not yet fine-tuned) model of a preset.

    Args:
        name: a preset name or a :class:`Preset`.
        seed: seeds the knowledge base and the model (and a pretrained memory's fit).
        device: where the model lives.

    Returns:
        ``(kb, task, model)``.
    """
    preset = name if isinstance(name, Preset) else get_preset(name)
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    kb = KnowledgeBase.random(**preset.kb_args(), seed=seed)
    task = ICRecallTask(kb, **preset.task_args())
    extra = dict(pretrain=dict(seed=seed)) if preset.memory == "pretrained" else {}
    model = build_model(task, **preset.model_args(), seed=seed, device=device, **extra)
    return kb, task, model
