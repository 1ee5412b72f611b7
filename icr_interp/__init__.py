"""icr_interp: mechanistic interpretability of in-context factual recall.

The package is layered after its data flow (each subpackage's ``__init__`` states its job)::

    task/         knowledge bases, vocabulary, prompts and their per-example layouts, roles, the Bayes ceiling
    tl/           the TransformerLens 3.x / 4.x switch and the 4.x mirror of HookedTransformer
    model/        the builder, residual basis, attention parametrisations, query-only forward, hook table,
                  memory/ (the associative-memory MLPs, one module per implementation, and their registry)
    training/     fine-tuning and evaluation
    analysis/     attention rows, template scores and their null, patching, ablation, circuit summary
    pipeline/     RunConfig, presets, the one pipeline
    storage/      atomic writes and locks, checkpoints
    viz/          circuitsvis views, figures, tables, HTML reports
    experiments/  sweeps, the n* search and fits, analyses of checkpoints

Importing the package is cheap: the names below load their modules on first use (PEP 562), so
``import icr_interp`` pulls in neither torch's model code nor TransformerLens, matplotlib, circuitsvis or Ray.
"""

import importlib
import warnings

from icr_interp import _moved
from icr_interp.version import __version__

# TransformerLens 3.x marks HookedTransformer as deprecated in favour of
# TransformerBridge, which wraps Hugging Face models; our models are built from
# a config with a custom memory MLP, which only HookedTransformer supports.
# This is the one place the warning is silenced.
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
_moved.install()

# public name -> the module that defines it
_EXPORTS = {
    "KnowledgeBase": "task.knowledge", "ICRecallTask": "task.prompts", "Batch": "task.batch",
    "Layout": "task.layout",
    "ModelConfig": "model.builder", "ICRModel": "model.builder", "build_model": "model.builder",
    "pretrain_memory": "model.memory.pretrained",
    "TrainConfig": "training.trainer", "finetune": "training.trainer", "evaluate": "training.trainer",
    "RunConfig": "pipeline.config", "KnowledgeConfig": "pipeline.config", "TaskConfig": "pipeline.config",
    "EvalConfig": "pipeline.config", "run": "pipeline.runner", "RunResult": "pipeline.runner",
    "save_checkpoint": "storage.checkpoint", "load_checkpoint": "storage.checkpoint",
    "Checkpoint": "storage.checkpoint", "CheckpointError": "storage.checkpoint",
    "score_templates": "analysis.scoring.templates", "TemplateScores": "analysis.scoring.templates",
    "load_pretrained_lm": "model.pretrained_lm", "pretrained_lm_names": "model.pretrained_lm",
    "TextICRecallTask": "task.text", "causal_template_test": "analysis.causal.causal_template",
    "recall_curve": "analysis.recall", "function_vector_heads": "analysis.causal.function_vectors",
    "evaluation_summary": "experiments.text_probe",
    "pairing_test_rows": "analysis.scoring.pairing_test", "edge_knockout": "analysis.causal.edge_knockout",
    "pairing_verdict": "analysis.causal.pairing_verdict",
    "capacity_sweep": "experiments.capacity", "weight_probes": "analysis.weights.weight_probes",
}
_SUBPACKAGES = {"task", "tl", "model", "training", "analysis", "pipeline", "storage", "viz", "experiments", "cli",
                "seeds", "version"}

__all__ = [
    "KnowledgeBase", "ICRecallTask", "Batch", "Layout", "ModelConfig", "ICRModel", "build_model", "pretrain_memory",
    "TrainConfig", "finetune", "evaluate", "RunConfig", "KnowledgeConfig", "TaskConfig", "EvalConfig", "run",
    "RunResult", "save_checkpoint", "load_checkpoint", "Checkpoint", "CheckpointError", "score_templates",
    "TemplateScores", "patching", "ablation", "circuit", "viz", "__version__",
    "load_pretrained_lm", "pretrained_lm_names", "TextICRecallTask", "causal_template_test", "recall_curve",
    "function_vector_heads", "evaluation_summary", "pairing_test_rows", "edge_knockout", "pairing_verdict",
    "capacity_sweep", "weight_probes",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    elif name in _moved.KEPT or name in _moved.MOVED:
        value = _moved.resolve(name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _moved.MOVED or name in _moved.KEPT:
        globals()[name] = value  # cache; moved names stay uncached so that each spelling warns once
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | _SUBPACKAGES)
