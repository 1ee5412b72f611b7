"""The run layer: :class:`RunConfig` (one experiment, completely), its named presets, and :func:`run`,
the one pipeline that the command line, sweeps and case studies share.
"""

from icr_interp.pipeline.config import (  # noqa: F401
    MAPPINGS, MAX_FACTS, KEY_NEUTRAL, MAX_PROMPTS, KnowledgeConfig, TaskConfig, EvalConfig, RunConfig,
)

from icr_interp.pipeline.runner import (  # noqa: F401
    RunResult, build, measure, run,
)
