"""Checkpoint directories on disk: save atomically without touching foreign files, load by read-verify-parse.

Saving never leaves DIR without a loadable checkpoint and never deletes what
the library did not write (:mod:`icr_interp.storage.atomic`'s one rule):

* a free DIR: the checkpoint is built in a staging directory beside it and
  renamed into place whole (:func:`~icr_interp.storage.atomic.publish_dir`);
* an existing empty DIR (``.``, a symlink to an empty folder) or a checkpoint
  of ours: under a lock on DIR, the weights, then config.json, are replaced
  in place, each old file kept in a staging directory inside DIR until both
  are in (:func:`~icr_interp.storage.atomic.swap_members`).  Files a user put
  beside them are kept, but only with ``force=True``: by default a checkpoint
  holding anything else is refused, and so is one written in a newer format;
* anything else (a file, a foreign directory, a config.json not ours) is
  refused with a :class:`CheckpointError` before any work.

**Loading reads each file once.**  config.json's bytes are parsed; the
weights' bytes are read into memory, their sha256 is compared with the one
config.json records, and *those same bytes* are parsed
(``safetensors.torch.load``).  A save running meanwhile can make the two files
disagree (new weights, old config); then the previous weights are looked for in
the save's staging directory, and failing that the whole read is retried.  No
path is ever opened twice, so a load returns the weights its config names or
a one-line :class:`CheckpointError`, never a mixture.
"""

import hashlib
import os
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import torch

from icr_interp.plumbing import one_line
from icr_interp.storage import atomic, preflight
from icr_interp.storage.checkpoint import schema
from icr_interp.storage.checkpoint.schema import CONFIG, MEMBERS, WEIGHTS, CheckpointError
from icr_interp.storage.locks import lock_dir
from icr_interp.task import limits

LOAD_ATTEMPTS = 50  # reads of a checkpoint that a running save keeps changing, before giving up


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
        force: also replace a checkpoint that has other files beside it (they are kept), or one in a newer format.
        **extra: metrics and notes, JSON-serialisable, stored under ``"metrics"``.

    Returns:
        The checkpoint path.
    """
    path = Path(path)
    target = check_writable(path, force=force)
    config = schema.build_config(model, task, extra, run_config)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    data = safetensors.torch.save(tensors, metadata={"format": "pt"})
    config["weights_sha256"] = hashlib.sha256(data).hexdigest()
    text = schema.json_text(config)
    try:
        if target.exists():
            with lock_dir(target):
                check_writable(target, force=force)  # another save may have changed it while we waited
                _roll_back_interrupted(target)  # before the stale staging directory (and its backup) goes
                atomic.remove_stale(target, locked=True)  # an earlier save's, killed or failed mid-swap
                _replace_in_place(target, data, text)
        else:
            _write_new(target, data, text)
        atomic.remove_stale(target.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {one_line(e)}") from e
    return path


def _write_bytes(file: Path, data: bytes) -> None:
    with open(file, "xb") as f:  # "x": never reuses an existing file
        f.write(data)


def _write_weights(file: Path, data: bytes) -> None:
    _write_bytes(file, data)


def _write_json(file: Path, text: str) -> None:
    _write_bytes(file, text.encode("utf-8"))


def _write_new(path: Path, data: bytes, text: str) -> None:
    tmp = atomic.temp_dir(path)
    try:
        _write_weights(tmp / WEIGHTS, data)
        _write_json(tmp / CONFIG, text)
        atomic.publish_dir(tmp, path)
    finally:
        atomic.remove_if_ours(tmp.parent)  # ours, and gone already unless the write failed


def _roll_back_interrupted(path: Path) -> None:
    """Put back the weights config.json names when an earlier save was killed between its two swaps.

    Such a save leaves its new weights beside the old config.json, and the old weights only in its staging
    directory, where a load finds them (:func:`read_consistent`).  The next save clears stale staging
    directories; without this step, a kill of *that* save before its own swaps would leave no copy of the
    weights config.json names.  Called under the checkpoint's lock; one atomic rename.
    """
    try:
        want = _config_of(_config_bytes(path), path)["weights_sha256"]
        if sha256(path / WEIGHTS) == want:
            return
        for candidate in atomic.backups(path / WEIGHTS):
            if sha256(candidate) == want:
                atomic.restore_backup(candidate, path / WEIGHTS)
                return
    except (CheckpointError, OSError, KeyError, TypeError):
        return  # nothing readable to restore; check_writable has already judged the directory


def _replace_in_place(path: Path, data: bytes, text: str) -> None:
    stage = atomic.staging_dir(path)
    try:
        weights = atomic.stage(path / WEIGHTS, lambda f: _write_weights(f, data), into=stage)
        config = atomic.stage(path / CONFIG, lambda f: _write_json(f, text), into=stage)
        atomic.swap_members(path, [(WEIGHTS, weights), (CONFIG, config)])  # config.json names its weights: last
    finally:
        if not any((stage / f"{name}.old").exists() for name in MEMBERS):  # nothing replaced yet: not needed
            atomic.remove_if_ours(stage)  # (else it holds the previous weights the old config.json names)


def check_writable(path: str | Path, force: bool = False) -> Path:
    """The directory a checkpoint at ``path`` will be written to; CheckpointError (one line) if it may not be.

    A symbolic link to a directory is followed (the link is kept).
    """
    try:
        path = preflight.check_path(path, "checkpoint path")
        if path.is_symlink() and path.exists():
            path = path.resolve()
    except ValueError as e:
        raise CheckpointError(f"cannot write checkpoint: {one_line(e)}") from None
    if not path.exists():
        if path.is_symlink():
            raise CheckpointError(f"refusing to write checkpoint over broken symlink {path}")
        _check_creatable(path, path.absolute().parent)
        return path
    if not path.is_dir():
        raise CheckpointError(f"refusing to overwrite {path}: it exists and is not a directory")
    _check_creatable(path, path)
    entries = sorted(p.name for p in _entries(path))
    if not entries:
        return path
    if CONFIG not in entries:
        raise CheckpointError(f"refusing to overwrite {path}: a non-empty directory that is not a checkpoint "
                              f"(no {CONFIG})")
    config = _parsed_config(path)
    if not schema.is_ours(config):
        raise CheckpointError(f"refusing to overwrite {path}: its {CONFIG} is not an icr_interp checkpoint's "
                              f"(no {schema.FORMAT_FAMILY}* format marker)")
    newer = schema.newer_than_ours(config)
    if newer and not force:
        raise CheckpointError(f"refusing to replace checkpoint {path}: it was written {newer}, which this library "
                              f"cannot read (force=True / --force replaces it)")
    ours = {d.name for d in atomic.staging_dirs(path)}
    foreign = [e for e in entries if e not in MEMBERS and e not in ours]
    if foreign and not force:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise CheckpointError(f"refusing to replace checkpoint {path}: it also holds {shown}, which are not ours "
                              f"(force=True / --force replaces the checkpoint and keeps them)")
    return path


def _entries(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {one_line(e.strerror or e)}") from None


def _parsed_config(path: Path):
    try:
        return schema.parse(_read_regular(path / CONFIG).decode("utf-8"), str(path / CONFIG))
    except (CheckpointError, OSError, UnicodeDecodeError):
        return None


def is_checkpoint(path: str | Path) -> bool:
    """A directory whose config.json carries our format marker (a Hugging Face folder is not one)."""
    path = Path(path)
    return path.is_dir() and schema.is_ours(_parsed_config(path))


def _check_creatable(path: Path, directory: Path) -> None:
    try:
        atomic.check_creatable(directory / ".probe")
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {one_line(e)}") from None


def sha256(file: Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    return hashlib.sha256(_read_regular(Path(file))).hexdigest()


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
    try:
        path = preflight.check_path(path, "checkpoint")
        return _load(_locate(path), device)
    except CheckpointError:
        raise
    except RecursionError:
        raise CheckpointError(f"cannot load checkpoint {path}: its config is nested too deeply") from None
    except Exception as e:  # noqa: BLE001 -- the promise: only CheckpointError leaves load_checkpoint
        raise CheckpointError(f"cannot load checkpoint {path} ({type(e).__name__}: {one_line(e)})") from None


def _load(path: Path, device) -> Checkpoint:
    device = _check_device(device)
    config, data = read_consistent(path)
    tensors = _parse_weights(data, path / WEIGHTS)
    task = schema.rebuild_task(config)
    schema.check_sizes(config, task, tensors)  # shapes and memory from the config, before building anything
    model = schema.rebuild_model(task, config, device)
    schema.check_tensors(tensors, model)
    train = schema.train_config(config)
    schema.run_config(config, task)  # validated now, so a damaged one cannot fail later
    model.load_state_dict(tensors, strict=True)
    model.icr_train = train
    model.memory_fitted = True  # a saved memory holds its fitted weights
    return Checkpoint(path=path, model=model, task=task, config=config, metrics=config.get("metrics") or {})


def read_consistent(path: Path) -> tuple[dict, bytes]:
    """(config, weight bytes) that belong together: each file read once, the weights' sha256 checked on those bytes."""
    for attempt in range(LOAD_ATTEMPTS):  # a save running now may swap the files between our reads
        raw = _config_bytes(path)
        config = _config_of(raw, path)
        want = config["weights_sha256"]
        data = _read_regular(path / WEIGHTS, "weights")
        if hashlib.sha256(data).hexdigest() == want:
            return config, data
        for candidate in atomic.backups(path / WEIGHTS):  # an interrupted save: the previous weights are here
            try:
                data = _read_regular(candidate, "weights")
            except CheckpointError:  # removed by the save that is finishing now
                continue
            if hashlib.sha256(data).hexdigest() == want:
                return config, data
        if _config_bytes(path) == raw and not atomic.staging_dirs(path):
            break  # nothing changed and no save is under way: the mismatch is damage, not a race
        time.sleep(0.001 * min(attempt + 1, 20))
    actual = hashlib.sha256(data).hexdigest()
    raise CheckpointError(f"{path / WEIGHTS} is corrupted or truncated: sha256 {actual[:12]}... does not "
                          f"match {config['weights_sha256'][:12]}... recorded in {CONFIG}")


def _read_regular(file: Path, what: str = "file") -> bytes:
    """The bytes of a regular file, read once; CheckpointError for a folder, FIFO, device or an oversized file."""
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block us
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {one_line(e.strerror or e)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CheckpointError(f"{file} is not a regular file (it is a {_kind(st.st_mode)})")
        try:
            limits.check_bytes(st.st_size, f"reading {file}")
        except ValueError as e:
            raise CheckpointError(one_line(e)) from None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    except OSError as e:
        raise CheckpointError(f"cannot read {file}: {one_line(e.strerror or e)}") from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    return ("folder" if stat.S_ISDIR(mode) else "FIFO" if stat.S_ISFIFO(mode) else "device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "socket" if stat.S_ISSOCK(mode) else "special file")


def _locate(path: Path) -> Path:
    """``path``, or the previous checkpoint an interrupted save of the first release left at ``.NAME.old-*``."""
    if path.exists():
        return path
    try:
        olds = sorted((p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.old-") and p.is_dir()),
                      key=lambda p: p.stat().st_mtime, reverse=True)
    except OSError:
        olds = []
    for old in olds:  # read only: the library never deletes these (they carry no marker of ours)
        if (old / CONFIG).is_file() and (old / WEIGHTS).is_file():
            warnings.warn(f"checkpoint {path} is missing; loading the previous one that an interrupted save left "
                          f"at {old}", stacklevel=3)
            return old
    raise CheckpointError(f"checkpoint not found: {path}")


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
    """The validated (and migrated) config.json of the checkpoint at ``path`` (no weights read)."""
    path = Path(path)
    return _config_of(_config_bytes(path), path)


def _config_bytes(path: Path) -> bytes:
    _check_layout(path)
    return _read_regular(path / CONFIG)


def _config_of(raw: bytes, path: Path) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"cannot read {path / CONFIG}: {one_line(e)}") from None
    return schema.validate(schema.parse(text, str(path / CONFIG)), str(path / CONFIG))


def _check_layout(path: Path) -> None:
    """The path is a directory holding both checkpoint files."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(f"not a checkpoint directory: {path} is a file")
    for name in (CONFIG, WEIGHTS):
        member = path / name
        if not member.exists() and not member.is_symlink():
            raise CheckpointError(f"incomplete checkpoint: {path} has no {name}")


def _parse_weights(data: bytes, file: Path) -> dict[str, torch.Tensor]:
    """The tensors of safetensors ``data`` (the bytes whose sha256 was checked)."""
    try:
        return safetensors.torch.load(data)
    except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types
        raise CheckpointError(f"{file} cannot be parsed as safetensors: {one_line(e)}") from None
