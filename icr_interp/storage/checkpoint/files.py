"""Checkpoint directories on disk: save atomically without touching foreign files, load and validate.

Saving never leaves DIR without a loadable checkpoint and never deletes what
the library did not write:

* a free or empty DIR: the checkpoint is written to a temporary directory
  beside it and renamed into place whole (:func:`icr_interp.storage.fsio.publish_dir`);
* a checkpoint of ours at DIR (its config.json carries our format marker):
  the weights, then config.json, are replaced in place, each old file kept
  under a backup name until both are in (:func:`icr_interp.storage.fsio.swap_members`).
  Files a user put beside them are left alone, but only with ``force=True``:
  by default a checkpoint holding anything else is refused;
* anything else (a file, a foreign directory, a config.json that is not
  ours) is refused with a :class:`CheckpointError` before any work.

A crash between the two replacements leaves new weights beside the old
config.json; :func:`load_checkpoint` then finds the previous weights at their
backup name by their sha256 and loads the previous checkpoint.  Leftover
temporaries of ours are removed by the next successful save.
"""

import hashlib
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from icr_interp.storage import fsio
from icr_interp.storage.checkpoint import schema
from icr_interp.storage.checkpoint.schema import CONFIG, MEMBERS, WEIGHTS, CheckpointError, one_line


@dataclass
class Checkpoint:
    """A loaded checkpoint."""

    path: Path  # the directory it was read from
    model: object  # the rebuilt ICRModel with the saved weights
    task: object  # the ICRecallTask (and, as task.kb, the knowledge base)
    config: dict  # the parsed config.json
    metrics: dict  # the extra values passed to save_checkpoint

    @property
    def kb(self):
        return self.task.kb

    @property
    def run_config(self):
        """The :class:`~icr_interp.pipeline.config.RunConfig` the model came from, or None if none was saved."""
        return schema.run_config(self.config)


# --------------------------------------------------------------------- save
def save_checkpoint(path: str | Path, model, task, *, run_config=None, force: bool = False, **extra) -> Path:
    """Write ``model`` (built for ``task``) and ``extra`` metrics as a checkpoint directory, atomically.

    Args:
        path: the checkpoint directory: free, empty, or a checkpoint of ours to replace.
        model: a model from :func:`icr_interp.model.builder.build_model` (a pretrained memory must be fitted).
        task: the task it was built for.
        run_config: the :class:`~icr_interp.pipeline.config.RunConfig` (or its dict) the model came from.
        force: also replace a checkpoint that has other files beside it (they are kept).
        **extra: metrics and notes, JSON-serialisable, stored under ``"metrics"``.

    Returns:
        The checkpoint path.
    """
    path = Path(path)
    check_writable(path, force=force)
    config = schema.build_config(model, task, extra, run_config)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    try:
        if path.is_dir() and any(path.iterdir()):
            _replace_in_place(path, tensors, config)
        else:
            _write_new(path, tensors, config)
        fsio.remove_stale(path, MEMBERS)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {one_line(e)}") from e
    return path


def _write_weights(file: Path, tensors: dict) -> None:
    # Serialise in memory and write the bytes ourselves: save_file's Rust writer stages its own
    # ".tmpXXXXXX" file in the target directory, which a kill would leave behind under a name not ours.
    data = safetensors.torch.save(tensors, metadata={"format": "pt"})
    with open(file, "xb") as f:
        f.write(data)


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json_text(data), encoding="utf-8")


def json_text(data: dict) -> str:
    import json

    return json.dumps(data, indent=1, allow_nan=False) + "\n"


def _write_new(path: Path, tensors: dict, config: dict) -> None:
    tmp = fsio.temp_dir(path)
    try:
        _write_weights(tmp / WEIGHTS, tensors)
        config["weights_sha256"] = sha256(tmp / WEIGHTS)
        _write_json(tmp / CONFIG, config)
        fsio.publish_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # ours, and gone already unless the write failed


def _replace_in_place(path: Path, tensors: dict, config: dict) -> None:
    staged = []
    try:
        staged.append((WEIGHTS, fsio.stage(path / WEIGHTS, lambda f: _write_weights(f, tensors))))
        config["weights_sha256"] = sha256(staged[0][1])
        staged.append((CONFIG, fsio.stage(path / CONFIG, lambda f: _write_json(f, config))))
        fsio.swap_members(path, staged)  # weights first: config.json names the weights it belongs to
    finally:
        for _, file in staged:
            file.unlink(missing_ok=True)  # ours, and gone already unless the swap failed


def check_writable(path: str | Path, force: bool = False) -> None:
    """Raise CheckpointError unless a checkpoint may be written at ``path`` (see module docstring)."""
    path = Path(path)
    if not path.exists():
        if path.is_symlink():
            raise CheckpointError(f"refusing to write checkpoint over broken symlink {path}")
        ancestor = next((p for p in path.absolute().parents if p.exists()), None)
        if ancestor is not None and not ancestor.is_dir():
            raise CheckpointError(f"cannot write checkpoint {path}: {ancestor} is not a directory")
        _check_creatable(path, ancestor)
        return
    if not path.is_dir():
        raise CheckpointError(f"refusing to overwrite {path}: it exists and is not a directory")
    _check_creatable(path, path)
    _check_creatable(path, path.absolute().parent)
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    if CONFIG not in entries:
        raise CheckpointError(f"refusing to overwrite {path}: a non-empty directory that is not a checkpoint "
                              f"(no {CONFIG})")
    if not _is_ours(path):
        raise CheckpointError(f"refusing to overwrite {path}: its {CONFIG} is not an icr_interp checkpoint's "
                              f"(no {schema.FORMAT_FAMILY}* format marker)")
    leftovers = {p.name for name in MEMBERS for p in fsio.backups(path / name)}
    foreign = [e for e in entries
               if e not in MEMBERS and e not in leftovers and not e.startswith(fsio.PROBE_PREFIX)]
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise CheckpointError(f"refusing to replace checkpoint {path}: it also holds {shown}, which are not ours "
                              f"(force=True / --force replaces the checkpoint and keeps them)")


def _is_ours(path: Path) -> bool:
    try:
        return schema.is_ours(schema.parse((path / CONFIG).read_text(encoding="utf-8"), str(path / CONFIG)))
    except (CheckpointError, OSError, UnicodeDecodeError):
        return False


def _check_creatable(path: Path, directory: Path) -> None:
    try:
        fsio.check_creatable(directory / ".probe")
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {one_line(e)}") from None


def sha256(file: Path) -> str:
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
        CheckpointError: with a one-line message naming the problem (the only exception it raises).
    """
    path = Path(path)
    try:
        return _load(_locate(path), device)
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"cannot load checkpoint {path}: its config is nested too deeply") from None
    except Exception as e:  # noqa: BLE001 -- the promise: only CheckpointError leaves load_checkpoint
        raise CheckpointError(f"cannot load checkpoint {path} ({type(e).__name__}: {one_line(e)})") from None


def _load(path: Path, device) -> Checkpoint:
    device = _check_device(device)
    for _ in range(3):  # a save running now may swap the files between our reads
        config = read_config(path)
        weights = _matching_weights(path, config)
        if weights is not None:
            break
    else:
        actual = sha256(path / WEIGHTS)
        raise CheckpointError(f"{path / WEIGHTS} is corrupted or truncated: sha256 {actual[:12]}... does not "
                              f"match {config['weights_sha256'][:12]}... recorded in {CONFIG}")
    tensors = _read_weights(weights)
    task = schema.rebuild_task(config)
    model = schema.rebuild_model(task, config, device)
    schema.check_tensors(tensors, model)
    train = schema.train_config(config)
    schema.run_config(config)  # validated now, so a damaged one cannot fail later
    model.load_state_dict(tensors, strict=True)
    model.icr_train = train
    model.memory_fitted = True  # a saved memory holds its fitted weights
    return Checkpoint(path=path, model=model, task=task, config=config, metrics=config.get("metrics") or {})


def _locate(path: Path) -> Path:
    """``path``, or the previous checkpoint an interrupted save of the first release left beside it."""
    if path.exists():
        return path
    for old in fsio.stale_dirs(path, kinds=("old",)):
        if (old / CONFIG).is_file() and (old / WEIGHTS).is_file():
            warnings.warn(f"checkpoint {path} is missing; loading the previous one that an interrupted save left "
                          f"at {old}", stacklevel=3)
            return old
    raise CheckpointError(f"checkpoint not found: {path}")


def _matching_weights(path: Path, config: dict) -> Path | None:
    """model.safetensors if its sha256 is the recorded one, else our backup of it that matches (or None)."""
    want = config["weights_sha256"]
    if sha256(path / WEIGHTS) == want:
        return path / WEIGHTS
    for candidate in fsio.backups(path / WEIGHTS):  # an interrupted save: the previous weights are here
        try:
            if sha256(candidate) == want:
                return candidate
        except OSError:  # removed by the save that is finishing now
            continue
    return None


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise CheckpointError(f"invalid device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {str(device)!r} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise CheckpointError(f"device {str(device)!r} requested but only {torch.cuda.device_count()} GPU(s) exist")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CheckpointError(f"device {str(device)!r} requested but MPS is not available")
    return dev


def read_config(path: str | Path) -> dict:
    """The validated config.json of the checkpoint at ``path`` (no weights read)."""
    path = Path(path)
    _check_layout(path)
    try:
        text = (path / CONFIG).read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        raise CheckpointError(f"cannot read {path / CONFIG}: {one_line(e)}") from None
    return schema.validate(schema.parse(text, str(path / CONFIG)), str(path / CONFIG))


def _check_layout(path: Path) -> None:
    """The path is a directory holding both checkpoint files."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"not a checkpoint directory: {path} is a file")
    for name in (CONFIG, WEIGHTS):
        if not (path / name).is_file():
            raise CheckpointError(f"incomplete checkpoint: {path} has no {name}")


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors.torch.load_file(str(file), device="cpu")
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
        raise CheckpointError(f"{file} cannot be parsed as safetensors: {one_line(e)}") from None
