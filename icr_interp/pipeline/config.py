"""One run configuration: knowledge base, task, model, fine-tuning and evaluation.

A :class:`RunConfig` describes one experiment completely; :func:`icr_interp.run`
turns it into numbers, and every entry point (the ``icr-interp`` command,
sweeps, case studies, probes) goes through that one function, so the same
config gives the same numbers wherever it runs.  Presets are named
RunConfigs (:meth:`RunConfig.from_preset`); a sweep is a grid of them.

The run's ``seed`` is the only seed: every generator of the run is seeded by
:func:`icr_interp.seeds.derive_seed` from it and a purpose, so ``model.seed``
and ``train.seed`` are filled in from ``seed`` and cannot disagree with it.

Configs round-trip through JSON (``to_dict`` / ``from_dict``); unknown keys,
values of the wrong type (``"0.5"`` for a number) and out-of-range values are
refused with a one-line ``ValueError``, and so is a run whose estimated memory
exceeds :func:`icr_interp.task.limits.max_bytes` (:meth:`RunConfig.estimated_bytes`),
before anything is built.

Presets are registered here by :mod:`icr_interp.pipeline.presets` (which the
package imports), so the import graph runs one way: presets -> config.
"""

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field, fields, replace

from icr_interp.model.builder import ModelConfig
from icr_interp.plumbing import check_int
from icr_interp.seeds import check_seed, derive_seed
from icr_interp.task import limits
from icr_interp.training.trainer import TrainConfig

MAPPINGS = ("balanced", "random")
MAX_FACTS = 10**7  # the largest knowledge base a run may build (memory is ~O(facts))
# Fields added after sweeps were cached: left out of ``RunConfig.key`` while None (their default), so
# the keys of configs written before them, and the cached results under those keys, stay valid.  This
# holds only because None means what those configs ran: ``train.schedule`` None with a given lr is
# constant (training.trainer.finetune), and every config before schedules existed gave its lr.
KEY_NEUTRAL = (("train", "schedule"), ("knowledge", "builtin"))
MAX_PROMPTS = 10**6  # the largest training / evaluation set a run may draw
PRESETS: dict = {}  # name -> RunConfig, registered by icr_interp.pipeline.presets


@dataclass(frozen=True)
class KnowledgeConfig:
    """Which knowledge base to build (:meth:`KnowledgeBase.random`, a CSV of facts, or a built-in base)."""

    n_subjects: int = 64  # subjects of the random base
    n_relations: int = 8  # relations of the random base
    n_answers: int = 64  # answers of the random base
    answer_overlap: float = 1.0  # 1.0: one answer set shared by all relations; 0.0: disjoint sets (control)
    mapping: str = "balanced"  # balanced: every answer equally often (bijective when n_answers == n_subjects)
    csv: str = ""  # path of a subject,relation,answer CSV; when set, the random fields are ignored
    builtin: str | None = None  # a base shipped with the package (KnowledgeBase.builtin_names()), instead of a CSV

    def validate(self) -> None:
        if self.builtin is not None:
            from icr_interp.task.knowledge import KnowledgeBase

            if self.csv:
                raise ValueError("knowledge.csv and knowledge.builtin are both set; choose one")
            if self.builtin not in (names := KnowledgeBase.builtin_names()):
                raise ValueError(f"knowledge.builtin must be one of {', '.join(names)}, got {self.builtin!r}")
        elif not self.csv:
            _check_int(self, ("n_subjects", "n_relations", "n_answers"), low=1)
            if self.n_subjects * self.n_relations > MAX_FACTS:
                raise ValueError(f"knowledge base of {self.n_subjects} x {self.n_relations} facts exceeds "
                                 f"the limit of {MAX_FACTS:.0e}")
            limits.check_bytes(limits.knowledge_bytes(self.n_subjects, self.n_relations, self.n_answers),
                               f"a knowledge base of {self.n_subjects} subjects x {self.n_relations} relations "
                               f"with {self.n_answers} answers")
        if not 0.0 <= self.answer_overlap <= 1.0:
            raise ValueError(f"knowledge.answer_overlap must lie in [0, 1], got {self.answer_overlap}")
        if self.mapping not in MAPPINGS:
            raise ValueError(f"knowledge.mapping must be one of {MAPPINGS}, got {self.mapping!r}")

    def applies(self) -> tuple[str, ...]:
        """The fields that describe this base: the source for a CSV or built-in one, all for a random one."""
        if self.builtin is not None:
            return ("builtin",)
        if self.csv:
            return ("csv",)
        return tuple(f.name for f in fields(self) if f.name not in ("csv", "builtin"))

    def to_dict(self) -> dict:
        """The fields that apply (:meth:`applies`), plus any ignored field that differs from its default.

        Ignored fields holding their defaults are left out (a CSV base shows no ``n_subjects``); one that
        was set is kept, because it is part of :attr:`RunConfig.key` and a round trip must keep the key.
        """
        full, default = dataclasses.asdict(self), dataclasses.asdict(KnowledgeConfig())
        shown = set(self.applies())
        return {k: v for k, v in full.items() if k in shown or (v != default[k] and k not in ("csv", "builtin"))}

    def build(self, seed: int):
        """The knowledge base (``seed`` seeds a random one)."""
        from icr_interp.task.knowledge import KnowledgeBase

        if self.builtin is not None:
            return KnowledgeBase.builtin(self.builtin)
        if self.csv:
            return KnowledgeBase.from_csv(self.csv)
        return KnowledgeBase.random(self.n_subjects, self.n_relations, self.n_answers,
                                    answer_overlap=self.answer_overlap, seed=seed, mapping=self.mapping)


@dataclass(frozen=True)
class TaskConfig:
    """The IC-recall prompts (:class:`ICRecallTask`)."""

    n_pairs: int = 4  # context pairs k per prompt
    bos: bool = True  # prompts start with a BOS token (an attention sink)

    def validate(self) -> None:
        _check_int(self, ("n_pairs",), low=1, high=64)
        if not isinstance(self.bos, bool):
            raise ValueError(f"task.bos must be true or false, got {self.bos!r}")


@dataclass(frozen=True)
class EvalConfig:
    """Held-out measurements, before and after fine-tuning."""

    n_prompts: int = 1024  # held-out prompts for accuracy and loss
    n_template: int = 512  # prompts whose attention is scored against the templates (0: skip)

    def validate(self) -> None:
        _check_int(self, ("n_prompts",), low=1, high=MAX_PROMPTS)
        _check_int(self, ("n_template",), low=0, high=MAX_PROMPTS)


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs (see module docstring)."""

    name: str = "custom"  # a label: the preset it came from, or the user's
    seed: int = 0  # the one seed; every generator derives from it (icr_interp.seeds)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)  # the facts
    task: TaskConfig = field(default_factory=TaskConfig)  # the prompts
    model: ModelConfig = field(default_factory=ModelConfig)  # the transformer and its memory
    train: TrainConfig = field(default_factory=TrainConfig)  # fine-tuning of the attention
    eval: EvalConfig = field(default_factory=EvalConfig)  # held-out measurements

    def __post_init__(self) -> None:
        check_seed(self.seed)
        for name, kind in _SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"run-config section {name} must be a {kind.__name__}, got "
                                 f"{type(getattr(self, name)).__name__}")
            _check_types(type(getattr(self, name)), vars(getattr(self, name)), name)
        # The model's and the training set's seeds come from the run's seed, so they cannot disagree.
        object.__setattr__(self, "model", replace(self.model, seed=derive_seed(self.seed, "model")))
        object.__setattr__(self, "train", replace(self.train, seed=derive_seed(self.seed, "train")))
        self.knowledge.validate()
        self.task.validate()
        self.eval.validate()
        self.model.validate()
        try:
            self.train.validate()  # the one definition of a valid n_samples, steps, batch_size
        except ValueError as e:
            raise ValueError(f"train.{e}") from None
        for name in ("n_samples", "batch_size"):  # size limits (prompts held at once), not validity
            value = getattr(self.train, name)
            if value > MAX_PROMPTS:
                raise ValueError(f"train.{name} must be in [1, {MAX_PROMPTS}], got {value}")
        limits.check_bytes(self.estimated_bytes(), f"run {self.name!r}")

    def estimated_bytes(self) -> int:
        """Memory the run needs at once (estimate): the knowledge base, the model's weights, the prompts.

        A CSV or built-in base is sized when it is read (:meth:`KnowledgeBase.from_csv`); here it counts 0.
        """
        k, n_ctx = self.knowledge, 2 * self.task.n_pairs + 2
        if k.csv or k.builtin is not None:
            return limits.prompt_bytes(self.train.n_samples + self.eval.n_prompts + self.eval.n_template, n_ctx)
        from icr_interp.model.basis import n_directions_needed

        d_vocab = 1 + k.n_subjects + k.n_answers + k.n_relations
        d_model = self.model.d_model or min(1024, 64 * -(-n_directions_needed(d_vocab, n_ctx, k.n_relations) // 64))
        return (limits.knowledge_bytes(k.n_subjects, k.n_relations, k.n_answers)
                + limits.model_bytes(d_vocab, n_ctx, d_model, self.model.n_heads, self.model.n_layers)
                + limits.prompt_bytes(self.train.n_samples + self.eval.n_prompts + self.eval.n_template, n_ctx))

    # ------------------------------------------------------------ presets
    @classmethod
    def from_preset(cls, name: str, seed: int = 0, **overrides) -> "RunConfig":
        """The preset called ``name`` (see :mod:`icr_interp.pipeline.presets`) with ``seed`` and dotted overrides.

        Example: ``RunConfig.from_preset("tiny", seed=3, **{"train.steps": 10})``.
        """
        return get_preset(name).with_overrides(seed=seed, **overrides)

    def with_overrides(self, **overrides) -> "RunConfig":
        """A copy with fields replaced; nested fields by dotted names (``"train.n_samples"``)."""
        top, nested = {}, {}
        for key, value in overrides.items():
            part, _, leaf = key.partition(".")
            if part not in _FIELDS:
                raise ValueError(f"unknown RunConfig field {key!r}; fields are {', '.join(_FIELDS)}")
            if leaf:
                nested.setdefault(part, {})[leaf] = value
            else:
                top[part] = value
        for part, values in nested.items():
            section = top.get(part, getattr(self, part))
            known = {f.name for f in fields(section)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"unknown field {part}.{unknown[0]}; {part} has {', '.join(sorted(known))}")
            _check_types(type(section), values, part)  # "0.5" for a number: one line, before building
            top[part] = replace(section, **values)
        return replace(self, **top)

    # -------------------------------------------------------- serialise
    def to_dict(self) -> dict:
        """JSON-able sections; the knowledge section shows only the fields that apply to its base."""
        data = dataclasses.asdict(self)
        data["knowledge"] = self.knowledge.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        """The config ``to_dict`` wrote (unknown or ill-typed keys raise a one-line ValueError)."""
        if not isinstance(data, dict):
            raise ValueError(f"a run config must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown run-config key {unknown[0]!r}")
        sections = {}
        for name, kind in _SECTIONS.items():
            if name in data:
                sections[name] = _section(kind, data[name], name)
        try:
            return cls(**{k: v for k, v in data.items() if k not in _SECTIONS}, **sections)
        except TypeError as e:
            raise ValueError(f"bad run config: {e}") from None

    @property
    def key(self) -> str:
        """A short stable digest of the whole config (a sweep's run identifier): every field, as always."""
        data = dataclasses.asdict(self)
        for section, name in KEY_NEUTRAL:  # fields added after results were cached: out of the key at None
            if data[section][name] is None:
                del data[section][name]
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def summary(self) -> str:
        """One line saying what the run builds."""
        k, m = self.knowledge, self.model
        if k.builtin is not None:
            facts = f"facts of the built-in {k.builtin!r} base"
        elif k.csv:
            facts = f"facts from {k.csv}"
        else:
            answers = {1.0: "shared", 0.0: "disjoint"}.get(k.answer_overlap, f"overlap {k.answer_overlap:g}")
            facts = (f"{k.n_subjects} subjects x {k.n_relations} relations = {k.n_subjects * k.n_relations} facts, "
                     f"{k.n_answers} answers {answers} ({k.mapping})")
        return (f"{self.name}: {facts}, k={self.task.n_pairs} pairs, {m.memory} memory, "
                f"{m.n_layers} layer(s) x {m.n_heads} head(s); seed {self.seed}")


_SECTIONS = {"knowledge": KnowledgeConfig, "task": TaskConfig, "model": ModelConfig, "train": TrainConfig,
             "eval": EvalConfig}
_FIELDS = ("name", "seed", *_SECTIONS)


def _section(kind, data, name: str):
    if not isinstance(data, dict):
        raise ValueError(f"run-config section {name!r} must be a JSON object")
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown run-config key {name}.{unknown[0]}")
    _check_types(kind, data, name)
    try:
        return kind(**data)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad run-config section {name}: {e}") from None


def get_preset(name) -> RunConfig:
    """The preset called ``name`` (seed 0); ValueError listing the valid names otherwise."""
    if isinstance(name, RunConfig):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def _check_int(obj, names, low: int, high: int | None = None) -> None:
    """One-line ValueError unless each field is an int in [low, high] (:func:`icr_interp.plumbing.check_int`)."""
    where = type(obj).__name__.replace("Config", "").lower()
    for name in names:
        value = check_int(getattr(obj, name), f"{where}.{name}")
        if value < low or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"in [{low}, {high}]"
            raise ValueError(f"{where}.{name} must be {bound}, got {value}")


_SIMPLE = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _check_types(kind, values: dict, name: str) -> None:
    """One-line ValueError for a value not of its field's declared simple type (``"0.5"`` for a float).

    ``values`` maps field names of the dataclass ``kind`` to values.  Only fields annotated with int,
    float, bool, str (optionally ``| None``) are checked; an int is a float (PEP 484), a bool is neither.
    """
    hints = typing.get_type_hints(kind)
    for field_name, value in values.items():
        kinds = _simple_kinds(hints.get(field_name))
        if kinds is None or (value is None and type(None) in kinds):
            continue
        if not any(_is(value, k) for k in kinds if k is not type(None)):
            wanted = " or ".join(_SIMPLE[k] for k in kinds if k in _SIMPLE)
            raise ValueError(f"{name}.{field_name} must be {wanted}, got {value!r:.60}")


def _simple_kinds(hint) -> tuple | None:
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    return args if args and all(a in _SIMPLE or a is type(None) for a in args) else None


def _is(value, kind) -> bool:
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        try:
            return check_int(value, "value") is value
        except ValueError:
            return False
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, kind)
