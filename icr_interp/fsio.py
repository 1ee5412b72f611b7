"""Atomic file writes: the only module that renames files into place.

A reader (or a crash) never sees half a file: data goes to a temporary file
in the same directory, is flushed to disk, and is then renamed over the
target with ``os.replace`` (atomic on POSIX).  Files get the mode an ordinary
``open(path, "w")`` would give (``0o666`` minus the umask), read without
changing the process's umask.  A temporary file is removed if the write
fails; nothing else is ever deleted.
"""

import json
import os
import uuid
from pathlib import Path

import numpy as np


def plain(value):
    """Tensors, numpy values, tuples and dataclass-like objects (``to_dict``) as JSON-able Python values."""
    if hasattr(value, "to_dict") and callable(value.to_dict):
        return plain(value.to_dict())
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "xb") as f:  # "x": never follows or reuses an existing file; mode 0o666 & ~umask
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data) -> Path:
    """JSON (NaN refused: strict JSON readers cannot read it back) written atomically."""
    return write_bytes(path, (json.dumps(plain(data), indent=1, allow_nan=False) + "\n").encode("utf-8"))


def replace(src: str | Path, dst: str | Path) -> None:
    """Rename ``src`` over ``dst`` atomically (files, or a directory onto a free or empty name)."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


def fsync_dir(directory: str | Path) -> None:
    """Flush a directory entry to disk (where the platform allows opening directories)."""
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


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file, read without touching the umask (Linux ``/proc``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    return 0o644
