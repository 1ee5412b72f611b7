"""Named run configurations: each preset is a :class:`~icr_interp.pipeline.config.RunConfig`.

A preset fixes everything but the seed: the knowledge base, the task, the
model, the fine-tuning budget and the evaluation.  ``RunConfig.from_preset(name,
seed=S)`` picks one instance; ``icr_interp.run`` runs it.

* ``paper``      -- the reference configuration (docs/theory.md): shared answers,
  bijective relations, k = 4, constructed memory.
* ``control``    -- as ``paper`` with disjoint answer sets: an answer alone
  reveals the relation, so attention should go to answers only.
* ``pretrained`` -- as ``paper`` with the memory fitted by gradient descent
  (:mod:`icr_interp.model.memory.pretrained`) instead of written down.
* ``tiny``       -- a few facts and k = 2, for tests.

The presets are registered in :data:`icr_interp.pipeline.config.PRESETS` when
this module is imported (the package ``icr_interp.pipeline`` imports it), so
``RunConfig.from_preset`` finds them without config importing this module:
the import graph runs one way, presets -> config and presets -> runner.
"""

from dataclasses import replace

import torch

from icr_interp.model.builder import ICRModel, ModelConfig
from icr_interp.pipeline.config import PRESETS, KnowledgeConfig, RunConfig, TaskConfig, get_preset  # noqa: F401
from icr_interp.pipeline.runner import build
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.prompts import ICRecallTask
from icr_interp.training.trainer import TrainConfig

_PAPER = RunConfig(
    name="paper",
    knowledge=KnowledgeConfig(n_subjects=64, n_relations=8, n_answers=64, answer_overlap=1.0, mapping="balanced"),
    task=TaskConfig(n_pairs=4),
    model=ModelConfig(memory="constructed"),
    train=TrainConfig(n_samples=2048, steps=200),  # lr, schedule: by attention (attention_params.DEFAULT_LR)
)

PRESETS.update({
    p.name: p
    for p in (
        _PAPER,
        replace(_PAPER, name="control", knowledge=replace(_PAPER.knowledge, answer_overlap=0.0)),
        replace(_PAPER, name="pretrained", model=replace(_PAPER.model, memory="pretrained")),
        RunConfig(name="tiny", knowledge=KnowledgeConfig(n_subjects=16, n_relations=4, n_answers=16),
                  task=TaskConfig(n_pairs=2), train=TrainConfig(n_samples=256, steps=50, lr=0.01)),
    )
})

DESCRIPTIONS = {
    "paper": "reference: 64 subjects, 8 relations, 64 shared answers (bijective), k=4, constructed memory",
    "control": "as paper but each relation has its own answers: one answer reveals the relation",
    "pretrained": "as paper but the memory is pretrained on factual recall instead of constructed",
    "tiny": "for tests: 16 subjects, 4 relations, 16 shared answers, k=2",
}

def build_from_preset(name: str | RunConfig, seed: int = 0,
                      device: str | torch.device = "cpu") -> tuple[KnowledgeBase, ICRecallTask, ICRModel]:
    """The knowledge base, task and (not yet fine-tuned; memory fitted if pretrained) model of a preset.

    Args:
        name: a preset name or a :class:`RunConfig`.
        seed: the run seed (knowledge base, model, and a pretrained memory's fit derive from it).
        device: where the model lives.
    """
    config = get_preset(name).with_overrides(seed=seed)
    task, model = build(config, device)
    return task.kb, task, model


def __getattr__(name: str):
    from icr_interp._moved import module_attr

    return module_attr(__name__, name)  # Preset: the first release's name; a preset is now a RunConfig
