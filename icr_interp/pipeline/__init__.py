"""The run layer: :class:`RunConfig` (one experiment, completely), its named presets, and :func:`run`,
the one pipeline that the command line, sweeps and case studies share.
"""

from icr_interp.pipeline.config import (  # noqa: F401
    MAPPINGS, MAX_FACTS, KEY_NEUTRAL, MAX_PROMPTS, KnowledgeConfig, TaskConfig, EvalConfig, RunConfig, get_preset,
)

from icr_interp.pipeline.runner import (  # noqa: F401
    RunResult, build, measure, run,
)
from icr_interp.pipeline import presets  # noqa: F401,E402 -- registers the presets in config.PRESETS
