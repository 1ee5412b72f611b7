"""The checkpoint's ``config.json``: what it holds, which versions are read, and how it is validated.

``config.json`` is one JSON object::

    format           "icr_interp-checkpoint/2" (the marker that says the directory is ours; older
                     versions are migrated on reading, :mod:`~icr_interp.storage.checkpoint.migrations`)
    library_version  the icr_interp that wrote it (a newer one than ours is refused)
    weights_sha256   sha256 of model.safetensors
    metrics          the extra values passed to save_checkpoint
    model            ModelConfig (resolved: d_model, construction filled in)
    task             {"n_pairs", "bos"}
    train            the last fine-tuning's TrainConfig, or null
    run_config       the RunConfig the model came from, or null
    knowledge_base   the knowledge base itself (last: by far the longest entry)

Reading is defensive: the JSON is parsed without recursion limits to trip
over (nesting deeper than :data:`MAX_DEPTH` is refused), without
NaN/Infinity and without integers longer than :data:`MAX_DIGITS`; every
rebuilt part (knowledge base, task, model, training config, tensors) is
checked, and every problem becomes a one-line :class:`CheckpointError`.
"""

import dataclasses
import json
import math
import re

import torch

from icr_interp.plumbing import check_int, one_line
from icr_interp.storage.checkpoint import migrations
from icr_interp.storage.checkpoint.migrations import FORMAT, READABLE
from icr_interp.task import limits
from icr_interp.version import __version__

FORMAT_FAMILY = migrations.FAMILY  # any version of our format: the directory is ours
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MEMBERS = (WEIGHTS, CONFIG)  # the files a checkpoint directory holds, in the order a save replaces them
REQUIRED_KEYS = ("model", "task", "knowledge_base", "weights_sha256")
MAX_DEPTH = 24  # deepest JSON nesting a config may have (a real one has 5)
MAX_DIGITS = 40  # longest integer literal a config may hold


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message is one line."""


# ------------------------------------------------------------------ write
def build_config(model, task, extra: dict, run_config=None) -> dict:
    """The config.json content of ``model`` built for ``task`` (``weights_sha256`` left None)."""
    if not hasattr(model, "icr_config"):
        raise CheckpointError("model has no icr_config: build it with icr_interp.build_model")
    if (model.cfg.d_vocab, model.cfg.n_ctx) != (task.vocab.size, task.n_ctx):
        raise CheckpointError(f"model (vocab {model.cfg.d_vocab}, n_ctx {model.cfg.n_ctx}) was not built for this "
                              f"task (vocab {task.vocab.size}, n_ctx {task.n_ctx})")
    if not getattr(model, "memory_fitted", True):  # a saved memory is a fitted one: loading marks it so
        raise CheckpointError("the pretrained memory has not been fitted: call icr_interp.pretrain_memory(model, "
                              "task) before saving")
    train = getattr(model, "icr_train", None)
    if run_config is not None and not isinstance(run_config, dict):
        run_config = run_config.to_dict()
    return dict(
        format=FORMAT,
        library_version=__version__,
        weights_sha256=None,
        metrics=json_checked(extra),
        model=model.icr_config.to_dict(),
        task=task.config(),
        train=dataclasses.asdict(train) if train is not None else None,
        run_config=json_checked(dict(run_config=run_config))["run_config"],
        knowledge_base=task.kb.to_dict(),
    )


def json_text(data: dict) -> str:
    """config.json's text: indented strict JSON."""
    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def json_checked(extra: dict) -> dict:
    """``extra`` unchanged if every value is strict JSON; else an error naming the first bad key."""
    for key, value in extra.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"metric {key!r} is not JSON-serialisable: {one_line(e)}") from None
    return dict(extra)


# ------------------------------------------------------------------ read
def parse(text: str, where: str):
    """The JSON value of ``text``; CheckpointError for invalid JSON, NaN, huge integers or deep nesting."""

    def parse_int(literal: str) -> int:
        if len(literal.lstrip("-")) > MAX_DIGITS:
            raise ValueError(f"holds an integer of {len(literal.lstrip('-'))} digits")
        return int(literal)

    def parse_float(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise ValueError(f"holds the non-finite number {literal[:20]}")
        return value

    def parse_constant(name: str):
        raise ValueError(f"holds {name}, which strict JSON does not allow")

    try:
        value = json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except RecursionError:
        raise CheckpointError(f"{where} is nested too deeply") from None
    except ValueError as e:
        raise CheckpointError(f"{where} {one_line(e)}") from None
    if _too_deep(value):
        raise CheckpointError(f"{where} is nested deeper than {MAX_DEPTH} levels")
    return value


def _too_deep(value) -> bool:
    """Whether a parsed JSON value nests deeper than MAX_DEPTH (iterative: no recursion to overflow)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def is_ours(config) -> bool:
    """True when a parsed config.json carries our format marker (any version)."""
    return isinstance(config, dict) and isinstance(config.get("format"), str) and \
        config["format"].startswith(FORMAT_FAMILY)


def validate(config, where: str) -> dict:
    """``config`` if it is a config.json this library reads; a one-line CheckpointError otherwise."""
    if not isinstance(config, dict):
        raise CheckpointError(f"{where} must hold a JSON object, got {type(config).__name__}")
    fmt = config.get("format")
    if fmt not in READABLE:
        what = "unsupported checkpoint version" if is_ours(config) else "unknown checkpoint format"
        raise CheckpointError(f"{where}: {what} {fmt!r} (this library reads {', '.join(map(repr, READABLE))})")
    _check_version(config.get("library_version"), where)
    config = migrations.migrate(config)
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{where} lacks the key(s) {', '.join(missing)}")
    sha = config["weights_sha256"]
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        raise CheckpointError(f"{where}: weights_sha256 must be 64 hex digits, got {str(sha)[:20]!r}")
    for key, optional in (("model", False), ("task", False), ("knowledge_base", False), ("train", True),
                          ("metrics", True), ("run_config", True)):
        value = config.get(key)
        if not isinstance(value, dict) and not (optional and value is None):
            raise CheckpointError(f"{where}: {key} must be a JSON object, got {type(value).__name__}")
    return config


def _check_version(version, where: str) -> None:
    """Refuse a config written by a newer library (both versions in the message)."""
    if version is None:
        return
    ours = _version_tuple(__version__)
    theirs = _version_tuple(version) if isinstance(version, str) else None
    if theirs is None:
        raise CheckpointError(f"{where}: library_version must be a version string like {__version__!r}, "
                              f"got {str(version)[:40]!r}")
    if theirs > ours:
        raise CheckpointError(f"{where} was written by icr_interp {version}, newer than this library "
                              f"({__version__}): upgrade icr_interp to read it")


def newer_than_ours(config) -> str | None:
    """How a parsed config of ours was written by a newer library (format or version), or None."""
    if not isinstance(config, dict):
        return None
    theirs, ours = migrations.version(config.get("format")), migrations.version(FORMAT)
    if theirs is not None and theirs > ours:
        return f"in format {config['format']!r}"
    version = config.get("library_version")
    parsed = _version_tuple(version) if isinstance(version, str) else None
    if parsed is not None and parsed > _version_tuple(__version__):
        return f"by icr_interp {version}"
    return None


def _version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"(\d{1,6}(?:\.\d{1,6}){0,3})(?:[.+-]?[0-9A-Za-z.+-]*)?", text.strip())
    return tuple(int(x) for x in match.group(1).split(".")) if match else None


# ------------------------------------------------------------------ rebuild
def rebuild_task(config: dict):
    from icr_interp.task.knowledge import KnowledgeBase
    from icr_interp.task.prompts import ICRecallTask

    try:
        kb = KnowledgeBase.from_dict(config["knowledge_base"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, OverflowError) as e:
        raise CheckpointError(f"{CONFIG}: invalid knowledge_base ({type(e).__name__}: {one_line(e)})") from None
    try:
        return ICRecallTask(kb, **config["task"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{CONFIG}: invalid task config ({one_line(e)})") from None


def rebuild_model(task, config: dict, device):
    """The model of a (migrated) ``config`` with freshly built weights (a pretrained memory is not refitted)."""
    from icr_interp.model.builder import ModelConfig, model_from_config

    try:
        cfg = ModelConfig(**config["model"])
    except TypeError as e:
        raise CheckpointError(f"{CONFIG}: invalid model config ({one_line(e)})") from None
    try:
        return model_from_config(task, cfg, device=device)
    except Exception as e:  # noqa: BLE001 -- any failure to build is the config's fault here
        raise CheckpointError(f"cannot rebuild the model from {CONFIG} ({type(e).__name__}: {one_line(e)})"
                              ) from None


def check_sizes(config: dict, task, tensors: dict[str, torch.Tensor]) -> None:
    """Before building: the config's architecture matches the saved tensors, and its weights fit in memory.

    A config edited to ask for d_model 8192 and 64 heads would otherwise build
    a 17 GB attention matrix before any shape check.
    """
    model = config["model"]
    dims = {k: model.get(k) for k in ("d_model", "n_heads", "n_layers")}
    try:
        for key, value in dims.items():
            check_int(value, key)
    except ValueError:
        return  # ModelConfig refuses the types with its own message
    saved = {}
    if "embed.W_E" in tensors and tensors["embed.W_E"].ndim == 2:
        saved["d_vocab"], saved["d_model"] = tensors["embed.W_E"].shape
    w_q = next((tensors[name] for name in sorted(tensors) if name.endswith(".attn.W_Q")), None)  # first block's
    if w_q is not None and w_q.ndim == 3:
        saved["n_heads"] = w_q.shape[0]
    saved["n_layers"] = len({name.split(".")[1] for name in tensors if name.startswith("blocks.")})
    wanted = dict(dims, d_vocab=task.vocab.size)
    wrong = [f"{k} {wanted[k]} (the weights have {saved[k]})" for k in ("d_vocab", "d_model", "n_heads", "n_layers")
             if k in saved and wanted[k] not in (saved[k], 0)]
    if wrong:
        raise CheckpointError(f"{WEIGHTS} does not match {CONFIG}: config implies {', '.join(wrong)}")
    d_model = dims["d_model"] or saved.get("d_model", 0)
    try:
        limits.check_bytes(limits.model_bytes(task.vocab.size, task.n_ctx, d_model, dims["n_heads"],
                                              dims["n_layers"]), f"the model of {CONFIG}")
    except ValueError as e:
        raise CheckpointError(one_line(e)) from None


def train_config(config: dict):
    """The saved fine-tuning config as a validated TrainConfig, or None."""
    from icr_interp.training.trainer import TrainConfig

    if config.get("train") is None:
        return None
    try:
        cfg = TrainConfig(**config["train"])
        cfg.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{CONFIG}: invalid train config ({one_line(e)})") from None
    return cfg


def run_config(config: dict, task=None):
    """The saved RunConfig, or None; with ``task``, it must agree with the saved task and model."""
    from icr_interp.pipeline.config import RunConfig

    if config.get("run_config") is None:
        return None
    try:
        run = RunConfig.from_dict(config["run_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{CONFIG}: invalid run_config ({one_line(e)})") from None
    if task is not None:
        model = config["model"]
        saved = dict(n_pairs=task.n_pairs, bos=task.bos, memory=model.get("memory"), n_heads=model.get("n_heads"),
                     n_layers=model.get("n_layers"), attention=model.get("attention"))
        claimed = dict(n_pairs=run.task.n_pairs, bos=run.task.bos, memory=run.model.memory,
                       n_heads=run.model.n_heads, n_layers=run.model.n_layers, attention=run.model.attention)
        if run.model.d_model:
            saved["d_model"], claimed["d_model"] = model.get("d_model"), run.model.d_model
        wrong = [f"{k} {claimed[k]!r} (the checkpoint has {saved[k]!r})" for k in saved if claimed[k] != saved[k]]
        if wrong:
            raise CheckpointError(f"{CONFIG}: run_config disagrees with the checkpoint: {'; '.join(wrong[:3])}")
    return run


def check_tensors(tensors: dict[str, torch.Tensor], model) -> None:
    """Names, shapes and dtypes in the file match the model the config describes; every value is finite."""
    expected = model.state_dict()
    problems = []
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing:
        problems.append(f"missing tensors {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors {_short_list(unexpected)}")
    for name, t in tensors.items():
        if name not in expected:
            continue
        want = expected[name]
        if t.shape != want.shape:
            problems.append(f"{name} has shape {tuple(t.shape)}, config implies {tuple(want.shape)}")
        elif t.dtype != want.dtype:
            problems.append(f"{name} has dtype {t.dtype}, expected {want.dtype}")
    if problems:
        raise CheckpointError(f"{WEIGHTS} does not match {CONFIG}: {'; '.join(problems[:3])}"
                              + (f"; and {len(problems) - 3} more" if len(problems) > 3 else ""))
    # Non-finite values only where the freshly built model has none (TransformerLens's IGNORE mask is -inf).
    bad = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())
           and bool(torch.isfinite(expected[name]).all())]
    if bad:
        raise CheckpointError(f"{WEIGHTS} holds non-finite values (NaN or inf) in {_short_list(bad)}")


def _short_list(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")
