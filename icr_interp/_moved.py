"""The alias table: where each name of the flat package (0.1) lives now, and the one place old names resolve.

Release 0.2 moved the flat modules into layered subpackages (``task``, ``model``, ``training``, ``analysis``,
``pipeline``, ``storage``, ``experiments``, ``tl``, ``viz``).  Every alias here is removed in release
:data:`REMOVED_IN`, and its warning says so.  An alias never points from a lower layer of the import contract to
a higher one (a string import would hide an upward import from the contract; tests/test_architecture.py checks). Old import paths keep working through
:class:`MovedFinder`, a PEP 451 finder on ``sys.meta_path``: importing ``icr_interp.templates`` returns the module
object of ``icr_interp.analysis.templates`` (one module, two names, so monkeypatching either patches both) and
warns once per old name with a :class:`DeprecationWarning` that names the new path. Submodules of moved packages
(``icr_interp.patching.core``) follow their package. The first release's spellings of arguments and values
(the role ``"subject"``, ``construct_memory(factored=)``...) are :data:`MOVED_ARGS`. The library itself
uses none of the old names; the test suite proves it by turning these warnings into errors outside the alias tests.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

PACKAGE = "icr_interp"
REMOVED_IN = "0.4"  # the release that removes every alias of this table

# old module (relative to the package) -> new module. Old packages carry their submodules with them.
MOVED: dict[str, str] = {
    "compat": "tl.compat", "tl_config": "tl.config", "tl_components": "tl.components", "tl_mirror": "tl.mirror",
    "knowledge": "task.knowledge", "vocab": "task.vocab", "tokens": "task.tokens", "roles": "task.roles",
    "ceiling": "task.ceiling",
    "basis": "model.basis", "attention_params": "model.attention_params", "forward": "model.forward",
    "memory": "model.memory", "sparse_memory": "model.memory.sparse", "mixed_memory": "model.memory.reads",
    "pretrain": "model.memory.pretrained",
    "train": "training.trainer",
    "attention": "analysis.scoring.attention", "templates": "analysis.scoring.templates",
    "pairing_null": "analysis.scoring.pairing_null", "combined_rows": "analysis.scoring.combined_rows",
    "reliability": "analysis.causal.reliability", "stats": "analysis.stats",
    "ablation": "analysis.causal.ablation", "circuit": "analysis.causal.circuit",
    "layer_roles": "analysis.causal.job_split", "dynamics": "analysis.scoring.dynamics",
    "patching": "analysis.causal.patching",
    "config": "pipeline.config", "presets": "pipeline.presets",
    "fsio": "storage.atomic", "checkpoint": "storage.checkpoint",
    "sweep": "experiments.sweep", "sample_search": "experiments.n_star", "scaling": "experiments.fits",
    "probing": "experiments.checkpoint_analysis",
}

# Modules renamed inside a subpackage: old path (relative to the package) -> new one.
RENAMED: dict[str, str] = {
    "viz.legacy": "viz.model_report",
    "storage.fsio": "storage.atomic",  # was a re-export of atomic, locks and jsonio
    "analysis.suffix_patching": "analysis.causal.patching.suffix",  # now one engine strategy
    # analysis/ grouped by meaning (issue 29 item 4): attention scoring, causal analyses, weight-only probes;
    # a renamed package carries its submodules (analysis.patching.engine -> analysis.causal.patching.engine)
    "analysis.attention": "analysis.scoring.attention",
    "analysis.templates": "analysis.scoring.templates",
    "analysis.template_table": "analysis.scoring.template_table",
    "analysis.pairing_null": "analysis.scoring.pairing_null",
    "analysis.pairwise_form": "analysis.scoring.pairwise_form",
    "analysis.combined_rows": "analysis.scoring.combined_rows",
    "analysis.dynamics": "analysis.scoring.dynamics",
    "analysis.pairing_test": "analysis.scoring.pairing_test",
    "analysis.adjacency_control": "analysis.scoring.adjacency_control",
    "analysis.position_control": "analysis.scoring.position_control",
    "analysis.pairing_evidence": "analysis.scoring.pairing_evidence",
    "analysis.composed_pairing": "analysis.scoring.composed_pairing",
    "analysis.patching": "analysis.causal.patching",
    "analysis.circuit": "analysis.causal.circuit",
    "analysis.circuit_series": "analysis.causal.circuit_series",
    "analysis.ablation": "analysis.causal.ablation",
    "analysis.reliability": "analysis.causal.reliability",
    "analysis.function_vectors": "analysis.causal.function_vectors",
    "analysis.causal_template": "analysis.causal.causal_template",
    "analysis.edge_knockout": "analysis.causal.edge_knockout",
    "analysis.binding": "analysis.causal.binding",
    "analysis.pairing_verdict": "analysis.causal.pairing_verdict",
    "analysis.job_split": "analysis.causal.job_split",
    "analysis.weight_probes": "analysis.weights.weight_probes",
    "analysis.ov_readout": "analysis.weights.ov_readout",
}

# Module names that stay public at the top level without a warning (``ii.patching`` is the documented spelling).
KEPT = {"patching": "analysis.causal.patching", "ablation": "analysis.causal.ablation",
        "circuit": "analysis.causal.circuit",
        "viz": "viz"}

# The first release's spellings of arguments and values that still work: owner (a function, class or module's
# dotted name) -> {old spelling: what to write now}. The owner warns through :func:`moved_arg` on every use.
MOVED_ARGS: dict[str, dict[str, str]] = {
    f"{PACKAGE}.task.roles": {"subject": "subjects", "answer": "answers"},  # role names (read by roles.canonical)
    f"{PACKAGE}.model.memory.construct_memory": {"factored=...": 'impl="factored"'},
    f"{PACKAGE}.experiments.sweep.expand_grid": {"expand_grid(sizes, ...)": "expand_grid(kb_sizes=sizes, ...)"},
    f"{PACKAGE}.experiments.sweep.RunSpec": {"RunSpec(...)": "RunConfig(...)"},  # RunSpec.to_config() converts
}

# Renamed attributes: owner (a module's dotted name, or a class name) -> {old name: new dotted name}. A module
# owner resolves them in its ``__getattr__`` through :func:`module_attr`; a class through :func:`moved_attr`.
MOVED_ATTRS: dict[str, dict[str, str]] = {
    "ICRModel": {"icr_basis": "basis"},
    f"{PACKAGE}.analysis.causal.ablation": {"role_mask": f"{PACKAGE}.task.roles.mask"},  # takes a Batch or its Layout
    f"{PACKAGE}.storage.atomic": {  # what the storage.fsio facade (now an alias of atomic) also re-exported
        "FileLock": f"{PACKAGE}.storage.locks.FileLock", "LockBusy": f"{PACKAGE}.storage.locks.LockBusy",
        "lock_dir": f"{PACKAGE}.storage.locks.lock_dir", "json_safe": f"{PACKAGE}.storage.jsonio.json_safe",
        "dumps_strict": f"{PACKAGE}.storage.jsonio.dumps_strict"},
    f"{PACKAGE}.analysis.causal.patching": {"fast_path_applies": f"{PACKAGE}.model.forward.query_path_applies",
                                            "pearson": f"{PACKAGE}.analysis.stats.pearson",
                                            "role_masks": f"{PACKAGE}.task.roles.masks",  # were one-line wrappers
                                            "default_role_hooks": f"{PACKAGE}.model.hooks.component_hooks"},
    f"{PACKAGE}.analysis.causal.patching.suffix": {  # the first release's suffix_patching names (one engine now)
        "patch_heads": f"{PACKAGE}.analysis.causal.patching.heads.patch_heads_v1",
        "get_act_patch_attn_head_out_by_pos":
            f"{PACKAGE}.analysis.causal.patching.dropins.get_act_patch_attn_head_out_by_pos"},
    f"{PACKAGE}.training.trainer": {"EVAL_SALT": f"{PACKAGE}.seeds.EVAL_SALT"},
    f"{PACKAGE}.training": {"EVAL_SALT": f"{PACKAGE}.seeds.EVAL_SALT"},
    f"{PACKAGE}.analysis.causal.circuit": {"CircuitSeries": f"{PACKAGE}.analysis.causal.circuit_series.CircuitSeries"},
    f"{PACKAGE}.pipeline.presets": {"Preset": f"{PACKAGE}.pipeline.config.RunConfig"},
    f"{PACKAGE}.experiments.sweep": {"one_line_error": f"{PACKAGE}.experiments.sweep.executors.failure_text"},
}

# task layout (issue 29 item 2): a span's last token is ``*_end`` (was ``*_pos``); attributes and constructor
# keywords of :class:`icr_interp.task.layout.Layout` resolve through :func:`moved_attr`.
MOVED_ATTRS["Layout"] = {"subject_pos": f"{PACKAGE}.task.layout.Layout.subject_end",
                         "answer_pos": f"{PACKAGE}.task.layout.Layout.answer_end",
                         "query_pos": f"{PACKAGE}.task.layout.Layout.query_end"}

_warned: set[str] = set()


def _renamed_prefix(rel: str) -> str | None:
    """The longest key of RENAMED that is ``rel`` or a package above it (a renamed package keeps its submodules)."""
    hits = [old for old in RENAMED if rel == old or rel.startswith(old + ".")]
    return max(hits, key=len) if hits else None


def new_name(old: str) -> str | None:
    """The current dotted name of ``old`` (a full dotted module name), or None if it did not move."""
    rel = old[len(PACKAGE) + 1:] if old.startswith(PACKAGE + ".") else None
    if rel is None:
        return None
    renamed = _renamed_prefix(rel)
    if renamed is not None:
        return f"{PACKAGE}.{RENAMED[renamed]}{rel[len(renamed):]}"
    head, _, tail = rel.partition(".")
    if head not in MOVED:
        return None
    return f"{PACKAGE}.{MOVED[head]}" + (f".{tail}" if tail else "")


def warn_moved(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn once per old name that it moved."""
    if old in _warned:
        return
    _warned.add(old)
    warnings.warn(f"{old} moved to {new} in icr_interp 0.2; import it from there (the old name is removed in "
                  f"{REMOVED_IN})", DeprecationWarning, stacklevel=stacklevel)


def moved_arg(owner: str, old: str, stacklevel: int = 3) -> str:
    """What to write now for ``owner``'s old spelling ``old`` (:data:`MOVED_ARGS`), warning on every use."""
    new = MOVED_ARGS[owner][old]
    warnings.warn(f"{owner}: '{old}' is deprecated since icr_interp 0.2; write '{new}' (the old spelling is removed "
                  f"in {REMOVED_IN})", DeprecationWarning, stacklevel=stacklevel)
    return new


def resolve(old_attr: str):
    """The module an old top-level attribute (``icr_interp.templates``) names now, warning once."""
    if old_attr in KEPT:
        return importlib.import_module(f"{PACKAGE}.{KEPT[old_attr]}")
    new = f"{PACKAGE}.{MOVED[old_attr]}"
    warn_moved(f"{PACKAGE}.{old_attr}", new, stacklevel=4)
    return importlib.import_module(new)


def moved_attr(owner: str, name: str) -> str:
    """The new name of ``owner``'s renamed attribute ``name``, warning once."""
    new = MOVED_ATTRS[owner][name]
    warn_moved(f"{owner}.{name}", new, stacklevel=4)
    return new.rpartition(".")[2]


def module_attr(module: str, name: str):
    """For a module's ``__getattr__``: the object a renamed attribute names now (warning once)."""
    if name not in MOVED_ATTRS.get(module, {}):
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    new = MOVED_ATTRS[module][name]
    warn_moved(f"{module}.{name}", new, stacklevel=4)
    where, _, attr = new.rpartition(".")
    return getattr(importlib.import_module(where), attr)


def submodule_attr(package: str, name: str):
    """For a package's ``__getattr__``: a submodule that moved away (``ii.analysis.templates``), warning once."""
    old = f"{package}.{name}"
    new = new_name(old)
    if new is None:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    warn_moved(old, new, stacklevel=4)
    return importlib.import_module(new)


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, new: str):
        self.new = new

    def create_module(self, spec):
        return importlib.import_module(self.new)

    def exec_module(self, module):
        pass  # the module is already executed under its new name


class MovedFinder(importlib.abc.MetaPathFinder):
    """Resolve an old module name to the module under its new name (see the module docstring)."""

    def find_spec(self, fullname, path=None, target=None):
        new = new_name(fullname)
        if new is None:
            return None
        head = fullname[len(PACKAGE) + 1:].partition(".")[0]
        if head not in KEPT or _renamed_prefix(fullname[len(PACKAGE) + 1:]) is not None:
            warn_moved(fullname, new, stacklevel=6)
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new))


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (idempotent)."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedFinder())  # before the path finder, which would load a second copy
