"""Atomic writes and file locks: the only module that renames files and directories into place.

A reader (or a crash) never sees half a file: data goes to a temporary file in
the same directory, is flushed to disk, and is then renamed over the target
with ``os.replace`` (atomic on POSIX).  Files get the mode an ordinary
``open(path, "w")`` would give (``0o666`` minus the umask) and directories
``0o777`` minus the umask, read without changing the process's umask.

Two rules hold everywhere:

* **Nothing the library did not write is ever deleted.**  Temporaries carry a
  name of our own (``.NAME.<12 hex>.tmp`` / ``.old`` for files, ``.NAME.tmp-*``
  for directories), and :func:`remove_stale` deletes only those, and a
  directory only when it holds nothing but names it was told are ours.
* **A target is never missing.**  A new directory appears whole
  (:func:`publish_dir`); the members of an existing one are replaced one by
  one (:func:`swap_members`), each old member kept under a backup name until
  the last one is in, so a reader that finds the members disagreeing finds the
  previous version's member beside them (:func:`backups`).

:class:`FileLock` is an advisory ``flock`` on a file (released by the kernel
when its process dies, ``kill -9`` included).
"""

import errno
import json
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

_TOKEN = r"[0-9a-f]{12}"
PROBE_PREFIX = ".icr_interp-write-test-"  # check_creatable's probe files (mkstemp adds 8 characters)
_PROBE = re.compile(re.escape(PROBE_PREFIX) + r"[a-z0-9_]{8}")


def json_safe(value):
    """:func:`plain` values with non-finite floats as None: strict JSON has no NaN or Infinity."""
    value = plain(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


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


# ------------------------------------------------------------------ files
def temp_name(path: str | Path, kind: str = "tmp") -> Path:
    """A fresh name of ours beside ``path``: ``.NAME.<12 hex>.<kind>``."""
    path = Path(path)
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.{kind}"


def stage(path: str | Path, write: Callable[[Path], None]) -> Path:
    """A complete, fsynced file of ours beside ``path`` holding what ``write(tmp)`` wrote (not yet in place).

    ``write`` must create the file it is given.  The file gets :func:`file_mode`
    whatever created it (a Rust writer, ``mkstemp``); it is removed if anything fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        _fsync_file(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def write_with(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Atomically create or replace ``path`` with what ``write(tmp)`` writes (see :func:`stage`)."""
    path = Path(path)
    tmp = stage(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parents created)."""

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:  # "x": never follows or reuses an existing file
            f.write(data)

    return write_with(path, write)


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data, indent: int | None = 1) -> Path:
    """JSON (NaN refused: strict JSON readers cannot read it back) written atomically."""
    return write_bytes(path, (json.dumps(plain(data), indent=indent, allow_nan=False) + "\n").encode("utf-8"))


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


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _umask() -> int:
    """The umask, read without touching it (Linux ``/proc``; 0o022 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new directory."""
    return 0o777 & ~_umask()


def check_creatable(path: str | Path) -> None:
    """OSError (one line) unless a file could be created at ``path`` now: tried, not guessed from permissions.

    The nearest existing ancestor must be a directory in which a probe file of
    ours can be created (and is removed at once); root, read-only mounts and
    ACLs are all judged by the filesystem itself.
    """
    path = Path(path).absolute()
    ancestor = next((p for p in (path, *path.parents) if p.exists()), None)
    if ancestor is None:
        return
    if not ancestor.is_dir():
        ancestor = ancestor.parent
    try:
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=ancestor)
    except OSError as e:
        raise OSError(f"cannot create files in {ancestor}: {e.strerror or e}") from None
    os.close(fd)
    Path(probe).unlink(missing_ok=True)  # a concurrent remove_stale may have taken it already


# ------------------------------------------------------------ directories
def temp_dir(target: str | Path) -> Path:
    """A new empty directory of ours beside ``target`` (``.NAME.tmp-*``, ordinary permissions)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, dir_mode())  # mkdtemp makes 0700
    return tmp


def publish_dir(tmp: str | Path, target: str | Path) -> None:
    """Rename the complete directory ``tmp`` to ``target``, which must be free or an empty directory.

    Its files get :func:`file_mode` (whatever wrote them) and are flushed to disk first.
    """
    tmp, target = Path(tmp), Path(target)
    for member in tmp.iterdir():
        if member.is_file():
            os.chmod(member, file_mode())
            _fsync_file(member)
    fsync_dir(tmp)
    try:
        os.replace(tmp, target)  # atomic; POSIX refuses (ENOTEMPTY) a non-empty target
    except OSError as e:
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise OSError(e.errno, f"{target} is not empty") from None
        raise
    fsync_dir(target.parent)


def swap_members(directory: str | Path, staged: Iterable[tuple[str, Path]]) -> None:
    """Replace members of ``directory`` by staged files (written beside them), in the given order.

    Each existing member is first hard-linked (or copied) to a backup name
    ``.NAME.<hex>.old``; the backups are removed only once every member is in.
    A crash in between leaves the previous version of each replaced member at
    a backup name (:func:`backups`); nothing else in ``directory`` is touched.
    """
    directory = Path(directory)
    made = []
    for name, new in staged:
        current = directory / name
        if current.exists():
            backup = temp_name(current, "old")
            try:
                os.link(current, backup)
            except OSError:  # no hard links on this filesystem
                shutil.copy2(current, backup)
            made.append(backup)
        fsync_dir(directory)
        os.replace(new, current)
    fsync_dir(directory)
    for backup in made:
        backup.unlink(missing_ok=True)


def backups(path: str | Path) -> list[Path]:
    """Our leftover copies of file ``path`` (``.old`` backups and ``.tmp`` staged files), newest first."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_TOKEN}\.(old|tmp)")
    try:
        found = [p for p in path.parent.iterdir() if pattern.fullmatch(p.name) and p.is_file()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def stale_dirs(target: str | Path, kinds: tuple[str, ...] = ("tmp", "old")) -> list[Path]:
    """Our temporary directories beside ``target`` (``.NAME.tmp-*`` / ``.NAME.old-*``), newest first."""
    target = Path(target)
    prefixes = tuple(f".{target.name}.{kind}-" for kind in kinds)
    try:
        found = [p for p in target.parent.iterdir() if p.name.startswith(prefixes) and p.is_dir()]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def remove_stale(target: str | Path, ours: Iterable[str]) -> list[Path]:
    """Delete our leftovers of ``target``: backups of its members ``ours``, temporary directories, write probes.

    A temporary directory is deleted only if it holds nothing but files named
    in ``ours``; anything else is left where it is.  Returns what was removed.
    """
    target, ours = Path(target), set(ours)
    removed = []
    for directory in (target, target.parent):  # probes of a check_creatable that was killed
        try:
            probes = [p for p in directory.iterdir() if _PROBE.fullmatch(p.name) and p.is_file()]
        except OSError:
            probes = []
        for probe in probes:
            probe.unlink(missing_ok=True)
            removed.append(probe)
    if target.is_dir():
        for name in ours:
            for leftover in backups(target / name):
                leftover.unlink(missing_ok=True)
                removed.append(leftover)
    for stale in stale_dirs(target):
        try:
            if all(p.is_file() and p.name in ours for p in stale.iterdir()):
                shutil.rmtree(stale)
                removed.append(stale)
        except OSError:
            pass
    return removed


# ------------------------------------------------------------------ locks
class LockBusy(OSError):
    """Another process holds the lock (one-line message)."""


class FileLock:
    """An exclusive advisory lock on ``path`` (created if missing, never deleted), as a context manager.

    Args:
        path: the file to lock (e.g. a results file itself).
        wait: block until the lock is free (``on_wait`` is called once first);
            otherwise raise :class:`LockBusy` at once.
        timeout: with ``wait``, give up after this many seconds (None: wait forever).
        on_wait: called with one line when the lock is busy and we wait.
    """

    def __init__(self, path: str | Path, wait: bool = True, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None):
        self.path, self.wait, self.timeout, self.on_wait = Path(path), wait, timeout, on_wait
        self._fd: int | None = None

    def acquire(self) -> "FileLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, file_mode())
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return self
            except BlockingIOError:
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    os.close(fd)
                    raise LockBusy(f"{self.path} is locked by another process (another sweep writing it?)"
                                   ) from None
                if not told and self.on_wait is not None:
                    self.on_wait(f"waiting for {self.path}: another process holds its lock")
                told = True
                time.sleep(0.1)

    @property
    def fd(self) -> int:
        """The locked file's descriptor (opened for appending), while the lock is held."""
        if self._fd is None:
            raise RuntimeError(f"the lock on {self.path} is not held")
        return self._fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
