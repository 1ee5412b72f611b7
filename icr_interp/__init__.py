"""icr_interp: mechanistic interpretability of in-context factual recall."""

import warnings

# TransformerLens 3.x marks HookedTransformer as deprecated in favour of
# TransformerBridge, which wraps Hugging Face models; our models are built from
# a config with a custom memory MLP, which only HookedTransformer supports.
# This is the one place the warning is silenced.
warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)

__version__ = "0.1.0"

from icr_interp import ablation, circuit, patching, viz  # noqa: E402
from icr_interp.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from icr_interp.config import EvalConfig, KnowledgeConfig, RunConfig, TaskConfig  # noqa: E402
from icr_interp.knowledge import KnowledgeBase  # noqa: E402
from icr_interp.model import ICRModel, ModelConfig, build_model  # noqa: E402
from icr_interp.pipeline import RunResult, run  # noqa: E402
from icr_interp.pretrain import pretrain_memory  # noqa: E402
from icr_interp.task import Batch, ICRecallTask, Layout  # noqa: E402
from icr_interp.templates import TemplateScores, score_templates  # noqa: E402
from icr_interp.train import TrainConfig, evaluate, finetune  # noqa: E402

__all__ = [
    "KnowledgeBase", "ICRecallTask", "Batch", "Layout", "ModelConfig", "ICRModel", "build_model", "pretrain_memory",
    "TrainConfig", "finetune", "evaluate", "RunConfig", "KnowledgeConfig", "TaskConfig", "EvalConfig", "run",
    "RunResult", "save_checkpoint", "load_checkpoint", "Checkpoint", "CheckpointError", "score_templates",
    "TemplateScores", "patching", "ablation", "circuit", "viz", "__version__",
]
