"""Checkpoints: a fine-tuned model with everything needed to rebuild it.

A checkpoint is a directory::

    model.safetensors   every tensor of ``model.state_dict()`` (never pickle)
    config.json         format, library version, sha256 of the weights, metrics,
                        model / task / training config and the knowledge base

Loading rebuilds the knowledge base, the task and the model from
``config.json`` (the model is rebuilt by :func:`icr_interp.model.model_from_config`
without pretraining), checks the weights file against its sha256 and every
tensor's name, shape and dtype against the rebuilt model, then loads it
strictly: the loaded model gives the saved model's logits exactly.

Writes are atomic: the checkpoint is written to a temporary directory next to
the target, flushed to disk, then renamed into place; an existing checkpoint
is moved aside first and deleted only once the new one is in place.  A crash
mid-write leaves the old checkpoint intact (at worst under its hidden
``.NAME.old-*`` name, which :func:`load_checkpoint` points to).

Every problem surfaces as a :class:`CheckpointError` with a one-line message.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch
from transformer_lens import HookedTransformer

import icr_interp
from icr_interp.knowledge import KnowledgeBase
from icr_interp.model import ModelConfig, model_from_config
from icr_interp.task import ICRecallTask
from icr_interp.train import TrainConfig

FORMAT = "icr_interp-checkpoint/1"  # name/version written to and required in config.json
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
REQUIRED_KEYS = ("model", "task", "knowledge_base", "weights_sha256")


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read; the message is one line."""


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path  # the directory it was read from
    model: HookedTransformer  # the rebuilt model with the saved weights
    task: ICRecallTask  # the task (and, as task.kb, the knowledge base)
    config: dict  # the parsed config.json
    metrics: dict  # the extra values passed to save_checkpoint

    @property
    def kb(self) -> KnowledgeBase:
        return self.task.kb


# --------------------------------------------------------------------- save
def save_checkpoint(path: str | Path, model: HookedTransformer, task: ICRecallTask, **extra) -> Path:
    """Write ``model`` (built for ``task``) and ``extra`` metrics as a checkpoint directory, atomically.

    Args:
        path: the checkpoint directory; replaced if it already holds a checkpoint.
        model: a model from :func:`icr_interp.model.build_model` (has ``icr_config``).
        task: the task it was built for.
        **extra: metrics and notes, JSON-serialisable, stored under ``"metrics"``.

    Returns:
        The checkpoint path.
    """
    path = Path(path)
    check_writable(path)
    config = _config(model, task, extra)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a checkpoint follows the umask like any folder
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {_one_line(e)}") from e
    try:
        _write_weights(tmp / WEIGHTS, model)
        config["weights_sha256"] = _sha256(tmp / WEIGHTS)
        _write_json(tmp / CONFIG, config)
        _fsync_dir(tmp)
        _swap_in(tmp, path)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {_one_line(e)}") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already unless the write failed
    return path


def check_writable(path: str | Path) -> None:
    """Raise CheckpointError unless ``path`` is free, an empty directory or a checkpoint (to replace)."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise CheckpointError(f"refusing to write checkpoint over broken symlink {path}")
        ancestor = next((p for p in path.absolute().parents if p.exists()), None)
        if ancestor is not None and not ancestor.is_dir():
            raise CheckpointError(f"cannot write checkpoint {path}: {ancestor} is not a directory")
        return
    if not path.is_dir():
        raise CheckpointError(f"refusing to overwrite {path}: it exists and is not a directory")
    if any(path.iterdir()) and not (path / CONFIG).is_file():
        raise CheckpointError(f"refusing to overwrite {path}: a non-empty directory that is not a checkpoint "
                              f"(no {CONFIG})")


def _config(model: HookedTransformer, task: ICRecallTask, extra: dict) -> dict:
    """The config.json content (without the weights hash)."""
    if not hasattr(model, "icr_config"):
        raise CheckpointError("model has no icr_config: build it with icr_interp.build_model")
    if (model.cfg.d_vocab, model.cfg.n_ctx) != (task.vocab.size, task.n_ctx):
        raise CheckpointError(f"model (vocab {model.cfg.d_vocab}, n_ctx {model.cfg.n_ctx}) was not built for this "
                              f"task (vocab {task.vocab.size}, n_ctx {task.n_ctx})")
    train = getattr(model, "icr_train", None)
    return dict(
        format=FORMAT,
        library_version=icr_interp.__version__,
        weights_sha256=None,
        metrics=_json_checked(extra),
        model=model.icr_config.to_dict(),
        task=task.config(),
        train=dataclasses.asdict(train) if train is not None else None,
        knowledge_base=task.kb.to_dict(),  # last: by far the longest entry
    )


def _json_checked(extra: dict) -> dict:
    """``extra`` unchanged if every value is strict JSON; else an error naming the first bad key."""
    for key, value in extra.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"metric {key!r} is not JSON-serialisable: {_one_line(e)}") from None
    return dict(extra)


def _write_weights(file: Path, model: HookedTransformer) -> None:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    safetensors.torch.save_file(tensors, str(file), metadata={"format": "pt"})
    _fsync_file(file)


def _write_json(file: Path, data: dict) -> None:
    with open(file, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _swap_in(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing ``path`` is moved aside and deleted only afterwards."""
    if not path.exists():
        _rename(tmp, path)
        _fsync_dir(path.parent)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    _rename(path, old)
    try:
        _rename(tmp, path)
    except BaseException:
        _rename(old, path)  # put the old checkpoint back
        raise
    _fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def _rename(src: Path, dst: Path) -> None:
    """``os.rename`` (one place, so tests can simulate a crash between the two renames of a swap)."""
    os.rename(src, dst)


def _fsync_file(file: Path) -> None:
    with open(file, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    """Persist a directory's entries (renames); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------- load
def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read and validate a checkpoint directory; rebuild its model, task and knowledge base.

    Args:
        path: the checkpoint directory.
        device: where the model is put.

    Returns:
        A :class:`Checkpoint`; ``checkpoint.model`` gives the saved model's logits exactly.

    Raises:
        CheckpointError: with a one-line message naming the problem.
    """
    path = Path(path)
    config = read_config(path)
    tensors = _read_weights(path, config)
    task = _rebuild_task(config)
    model = _rebuild_model(task, config, device)
    _check_tensors(tensors, model)
    model.load_state_dict(tensors, strict=True)
    model.icr_train = _train_config(config)
    model.memory_fitted = True  # a saved memory holds its fitted weights
    return Checkpoint(path=path, model=model, task=task, config=config, metrics=config.get("metrics") or {})


def read_config(path: str | Path) -> dict:
    """The validated config.json of the checkpoint at ``path`` (no weights read)."""
    path = Path(path)
    _check_layout(path)
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / CONFIG} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
                              ) from None
    except (UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"cannot read {path / CONFIG}: {_one_line(e)}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / CONFIG} must hold a JSON object, got {type(config).__name__}")
    fmt = config.get("format")
    if fmt != FORMAT:
        known = isinstance(fmt, str) and fmt.startswith(FORMAT.split("/")[0] + "/")
        what = "unsupported checkpoint version" if known else "unknown checkpoint format"
        raise CheckpointError(f"{path / CONFIG}: {what} {fmt!r} (this library reads {FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{path / CONFIG} lacks the key(s) {', '.join(missing)}")
    return config


def _check_layout(path: Path) -> None:
    """The path is a directory holding both checkpoint files."""
    if not path.exists():
        leftovers = sorted(path.parent.glob(f".{path.name}.old-*")) if path.parent.is_dir() else []
        hint = f" (an interrupted save left the previous checkpoint at {leftovers[0]})" if leftovers else ""
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    if not path.is_dir():
        raise CheckpointError(f"not a checkpoint directory: {path} is a file")
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise CheckpointError(f"incomplete checkpoint: {path} has no {name}")


def _read_weights(path: Path, config: dict) -> dict[str, torch.Tensor]:
    """Tensors of model.safetensors after checking its sha256."""
    file = path / WEIGHTS
    actual = _sha256(file)
    if actual != config["weights_sha256"]:
        raise CheckpointError(f"{file} is corrupted or truncated: sha256 {actual[:12]}... does not match "
                              f"{str(config['weights_sha256'])[:12]}... recorded in {CONFIG}")
    try:
        return safetensors.torch.load_file(str(file), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{file} cannot be parsed as safetensors: {_one_line(e)}") from None


def _rebuild_task(config: dict) -> ICRecallTask:
    try:
        kb = KnowledgeBase.from_dict(config["knowledge_base"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{CONFIG}: invalid knowledge_base ({type(e).__name__}: {_one_line(e)})") from None
    try:
        return ICRecallTask(kb, **config["task"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{CONFIG}: invalid task config ({_one_line(e)})") from None


def _rebuild_model(task: ICRecallTask, config: dict, device) -> HookedTransformer:
    """The model of ``config`` with freshly built weights (a pretrained memory is not refitted)."""
    try:
        cfg = ModelConfig(**config["model"])
    except TypeError as e:
        raise CheckpointError(f"{CONFIG}: invalid model config ({_one_line(e)})") from None
    try:
        return model_from_config(task, cfg, device=device)
    except (TypeError, ValueError, KeyError, ImportError, RuntimeError) as e:
        raise CheckpointError(f"cannot rebuild the model from {CONFIG} ({type(e).__name__}: {_one_line(e)})"
                              ) from None


def _check_tensors(tensors: dict[str, torch.Tensor], model: HookedTransformer) -> None:
    """Names, shapes and dtypes in the file match the model the config describes."""
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


def _train_config(config: dict) -> TrainConfig | None:
    """The saved fine-tuning config as a TrainConfig, or None."""
    if config.get("train") is None:
        return None
    try:
        return TrainConfig(**config["train"])
    except TypeError as e:
        raise CheckpointError(f"{CONFIG}: invalid train config ({_one_line(e)})") from None


def _short_list(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _one_line(e: BaseException) -> str:
    """An exception's message squeezed onto one line."""
    return " ".join(str(e).split()) or type(e).__name__


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask
