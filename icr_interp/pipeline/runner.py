"""The one pipeline: :func:`run` turns a :class:`~icr_interp.pipeline.config.RunConfig` into numbers.

Every entry point -- ``icr-interp train`` / ``reproduce`` / ``sweep``, the case
studies, a notebook -- calls :func:`run`, so one config gives one set of numbers
wherever it runs.  The steps, in order:

1. build the knowledge base, the task and the model (``build_model`` never trains);
2. fit a pretrained memory (:func:`~icr_interp.model.memory.pretrained.pretrain_memory`), if the config asks for one;
3. measure the start: held-out accuracy and loss (``evaluate``) and the template scores;
4. fine-tune the attention (``finetune``);
5. measure again, on the same held-out prompts and the same scored prompts.

Every generator is seeded by :func:`icr_interp.seeds.derive_seed` from the
run's seed.  ``RunResult.metrics["accuracy"]`` is the held-out accuracy after
fine-tuning; ``metrics["start_accuracy"]`` the same measurement at the start.
"""

import time
from dataclasses import dataclass
from collections.abc import Callable

import torch

from icr_interp.pipeline.config import RunConfig
from icr_interp.model.builder import ICRModel, model_from_config
from icr_interp.seeds import derive_seed
from icr_interp.task.prompts import ICRecallTask
from icr_interp.training.trainer import History, evaluate, finetune


@dataclass
class RunResult:
    """What :func:`run` produced: the fine-tuned model and every measurement."""

    config: RunConfig  # what was run
    task: ICRecallTask  # its task (and, as task.kb, its knowledge base)
    model: ICRModel  # the fine-tuned model
    history: History  # per-step training loss and minibatch accuracy
    before: dict  # evaluate() at the start, with "templates" (headline template scores)
    after: dict  # the same after fine-tuning
    metrics: dict  # flat numbers: accuracy, loss, start_accuracy, start_loss, template scores, seconds

    def record(self) -> dict:
        """One JSON-able line (a sweep's result): the config's key, the config, the metrics."""
        return dict(key=self.config.key, config=self.config.to_dict(), **self.metrics)


def build(config: RunConfig, device: str | torch.device = "cpu") -> tuple[ICRecallTask, ICRModel]:
    """Steps 1-2: the task and the (not yet fine-tuned) model of ``config``."""
    kb = config.knowledge.build(derive_seed(config.seed, "knowledge"))
    task = ICRecallTask(kb, n_pairs=config.task.n_pairs, bos=config.task.bos)
    model = model_from_config(task, config.model, device=device)
    if model.icr_config.construction == "pretrained":
        from icr_interp.model.memory.pretrained import pretrain_memory

        pretrain_memory(model, task, progress=False)
    return task, model


def measure(model: ICRModel, task: ICRecallTask, config: RunConfig) -> dict:
    """Held-out accuracy, loss and query row, plus the headline template scores (``"templates"``)."""
    from icr_interp.analysis.scoring.templates import score_templates  # analyses sit downstream of training

    out = evaluate(model, task, n_prompts=config.eval.n_prompts, seed=config.seed)
    if config.eval.n_template > 0:
        scored = task.sample(config.eval.n_template, seed=derive_seed(config.seed, "templates"),
                             device=model.cfg.device)
        out["templates"] = score_templates(model, scored).headline()
    return out


def run(config: RunConfig, device: str | torch.device = "cpu", *, callback: Callable | None = None,
        progress: bool = False, log: Callable[[str], None] | None = None) -> RunResult:
    """Build, measure, fine-tune and measure one run (see module docstring).

    Args:
        config: the run.
        device: where the model lives.
        callback: passed to :func:`~icr_interp.training.trainer.finetune` (called after every step).
        progress: show the fine-tuning progress bar.
        log: called with one line per stage (e.g. ``print``); silent by default.
    """
    say = log or (lambda line: None)
    t0 = time.perf_counter()
    task, model = build(config, device)
    cfg = model.icr_config
    say(f"model: d_model={cfg.d_model}, memory={cfg.construction}, {cfg.n_layers} layer(s) x {cfg.n_heads} "
        f"head(s); training {', '.join(cfg.trainable)}")
    before = measure(model, task, config)
    history = finetune(model, task, config=config.train, callback=callback, progress=progress)
    after = measure(model, task, config)
    metrics = dict(accuracy=after["accuracy"], loss=after["loss"], start_accuracy=before["accuracy"],
                   start_loss=before["loss"], ceiling=after["ceiling"], n_triplets=task.kb.n_triplets,
                   construction=cfg.construction,
                   d_model_used=cfg.d_model, train_loss=history.loss[-1] if history.loss else None,
                   train_accuracy=history.accuracy[-1] if history.accuracy else None,
                   query_attention=after["query_attention"])
    for prefix, side in (("", after), ("start_", before)):
        for name, value in side.get("templates", {}).items():
            metrics[prefix + name] = value
    metrics["seconds"] = time.perf_counter() - t0
    return RunResult(config, task, model, history, before, after, metrics)
