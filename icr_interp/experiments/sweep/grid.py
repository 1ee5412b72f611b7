"""A sweep is a grid of :class:`~icr_interp.pipeline.config.RunConfig`: a base config and axes to vary.

:func:`expand_grid` starts from a base (a RunConfig or a preset name) and
takes the Cartesian product of the axes given, each a value or a list of
values, e.g. ``expand_grid("tiny", seeds=[0, 1], n_samples=[16, 64])``.  The
axes have short names (:data:`AXES`, e.g. ``n_samples`` -> ``train.n_samples``)
and any RunConfig field may be swept by its dotted name
(``**{"model.init_tilt": [2, 4]}``).  Knowledge-base sizes are one axis
(``kb_sizes=[(S, R, A), ...]`` or ``n_triplets=[N, ...]``).  Runs are
deduplicated by :attr:`RunConfig.key`, which is also a sweep's run identifier.

:func:`axes_of` reads the axis values back from a config or a result record
(for tables and fits).  :class:`RunSpec`, the first release's flat run
description, still builds and converts to a RunConfig (deprecated: :data:`icr_interp._moved.MOVED_ARGS`).
"""

import hashlib
import itertools
import json
from dataclasses import asdict, dataclass, fields
from collections.abc import Iterable, Sequence

from icr_interp._moved import moved_arg
from icr_interp.pipeline.config import RunConfig
from icr_interp.pipeline.presets import get_preset

AXES = {  # short axis name -> dotted RunConfig field
    "seeds": "seed",
    "n_pairs": "task.n_pairs",
    "n_samples": "train.n_samples",
    "memory": "model.memory",
    "answer_overlap": "knowledge.answer_overlap",
    "mapping": "knowledge.mapping",
    "bos": "task.bos",
    "steps": "train.steps",
    "lr": "train.lr",
    "batch_size": "train.batch_size",
    "d_model": "model.d_model",
    "n_heads": "model.n_heads",
    "n_layers": "model.n_layers",
    "init_tilt": "model.init_tilt",
    "n_eval": "eval.n_prompts",
    "n_template": "eval.n_template",
}
KB_FIELDS = ("knowledge.n_subjects", "knowledge.n_relations", "knowledge.n_answers")
ORDER = ("kb", "n_pairs", "seeds", "n_samples", "memory", "answer_overlap")  # first axes; the last given varies fastest


def sizes_for_triplets(n_triplets: Iterable[int], n_relations: int = 8) -> tuple[tuple[int, int, int], ...]:
    """Knowledge-base sizes with about ``n_triplets`` facts: S = N / R subjects and as many answers.

    With ``n_answers = n_subjects`` each relation of a balanced base is a
    bijection from subjects onto its answers (the reference, docs/theory.md).
    """
    return tuple((s, n_relations, s) for s in (max(2, round(n / n_relations)) for n in n_triplets))


def expand_grid(base: RunConfig | str | Sequence | None = None, *, kb_sizes: Sequence | None = None,
                n_triplets: Sequence[int] | None = None, n_relations: int = 8, overrides: dict | None = None,
                **axes) -> list[RunConfig]:
    """The RunConfigs of a grid, without duplicates, in grid order.

    Args:
        base: the config every run starts from: a RunConfig or a preset name (default: ``RunConfig()``).
            For the first release's calls, a list of sizes here means ``kb_sizes`` (deprecated).
        kb_sizes: ``(n_subjects, n_relations, n_answers)`` per knowledge-base size.
        n_triplets: alternatively, numbers of facts (see :func:`sizes_for_triplets`).
        n_relations: relations used with ``n_triplets``.
        overrides: dotted fields set in every run (``{"train.lr": 0.001}``).
        **axes: the axes (:data:`AXES` names or dotted fields), each a value or a list of values.

    Raises:
        TypeError: for an unknown axis. ValueError (one line): for a value a RunConfig refuses.
    """
    if base is not None and not isinstance(base, (str, RunConfig)):
        base, kb_sizes = None, base  # expand_grid([(S, R, A)], ...) as in the first release
        moved_arg(f"{__package__}.expand_grid", "expand_grid(sizes, ...)")
    if kb_sizes is not None and n_triplets is not None:
        raise ValueError("give kb_sizes or n_triplets, not both")
    config = get_preset(base) if base is not None else RunConfig()
    if overrides:
        config = config.with_overrides(**overrides)
    unknown = sorted(name for name in axes if name not in AXES and "." not in name)
    if unknown:
        raise TypeError(f"unknown grid arguments {unknown}; expected some of {sorted(AXES)} or dotted fields")
    grid: dict[str, tuple] = {}
    if n_triplets is not None:
        kb_sizes = sizes_for_triplets(_as_axis(n_triplets), n_relations)
    if kb_sizes is not None:
        grid["kb"] = tuple(_size(s) for s in _sizes(kb_sizes))
    for name in sorted(axes, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        grid[name] = _as_axis(axes[name])
    configs = []
    for values in itertools.product(*grid.values()):
        changes = {}
        for name, value in zip(grid, values):
            changes.update(zip(KB_FIELDS, value) if name == "kb" else {AXES.get(name, name): value})
        run = config.with_overrides(**changes)
        run.model.validate()  # a memory name, a width...: refused now, not in a worker
        configs.append(run)
    return list({c.key: c for c in configs}.values())


def _sizes(kb_sizes) -> list:
    if len(kb_sizes) == 3 and all(isinstance(x, int) for x in kb_sizes):
        return [kb_sizes]  # one size given bare
    return list(kb_sizes)


def _size(size) -> tuple[int, int, int]:
    if len(size) != 3:
        raise ValueError(f"a knowledge-base size is (n_subjects, n_relations, n_answers), got {size!r}")
    return tuple(size)


def _as_axis(value) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        return (value,)
    return tuple(value)


def axes_of(item) -> dict:
    """The grid axes of a RunConfig or a result record (its ``config``), by short name (seed, n_samples, ...).

    Also ``n_subjects``, ``n_relations``, ``n_answers``.  A record without a config gives {}.
    """
    if isinstance(item, RunConfig):
        config = item.to_dict()
    elif isinstance(item, dict) and isinstance(item.get("config"), dict):
        config = item["config"]
    else:
        return {}
    out = {}
    for name, dotted in {"seed": "seed", **dict(zip(("n_subjects", "n_relations", "n_answers"), KB_FIELDS)),
                         **{k: v for k, v in AXES.items() if k != "seeds"}}.items():
        value = config
        for part in dotted.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[name] = value
    return out


# ------------------------------------------------------------ first release
@dataclass(frozen=True)
class RunSpec:
    """Deprecated: the first release's flat description of one run; :meth:`to_config` gives its RunConfig."""

    n_subjects: int  # subjects in the random knowledge base
    n_relations: int  # relations in the random knowledge base
    n_answers: int  # answers in the random knowledge base
    answer_overlap: float = 1.0  # 0 = disjoint answer sets (control), 1 = one shared set
    mapping: str = "balanced"  # knowledge-base mapping: balanced (reference) | random
    n_pairs: int = 4  # context pairs k per prompt
    bos: bool = True  # prompts start with BOS
    memory: str = "constructed"  # constructed | pair | answer | pretrained
    d_model: int = 0  # residual width; 0 = the default
    seed: int = 0  # the run seed
    n_samples: int = 256  # size of the fixed training set
    steps: int = 400  # fine-tuning optimiser steps
    n_eval: int = 1024  # held-out prompts for accuracy and loss
    n_template: int = 256  # prompts for template scores (0 = skip)

    def __post_init__(self) -> None:
        moved_arg(f"{__package__}.RunSpec", "RunSpec(...)", stacklevel=4)
        for f in fields(self):  # normalise types so equal specs have equal keys (1 vs 1.0, numpy ints)
            object.__setattr__(self, f.name, f.type(getattr(self, f.name)))
        self.to_config()  # validates

    @property
    def kb_size(self) -> tuple[int, int, int]:
        return (self.n_subjects, self.n_relations, self.n_answers)

    @property
    def key(self) -> str:
        """The first release's readable id (a sweep of RunConfigs uses ``RunConfig.key``)."""
        body = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        digest = hashlib.sha1(body.encode()).hexdigest()[:10]
        return (f"S{self.n_subjects}-R{self.n_relations}-A{self.n_answers}-ov{self.answer_overlap:g}"
                f"-k{self.n_pairs}-{self.memory}-n{self.n_samples}-seed{self.seed}-{digest}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunSpec":
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    def to_config(self) -> RunConfig:
        """The RunConfig this spec describes (``RunConfig()``'s other defaults, e.g. the learning rate)."""
        axes = {AXES.get(name, name): value  # "seed" is a top-level field
                for name, value in self.to_dict().items() if name not in ("n_subjects", "n_relations", "n_answers")}
        run = RunConfig().with_overrides(**dict(zip(KB_FIELDS, self.kb_size)), **axes)
        run.model.validate()
        return run
