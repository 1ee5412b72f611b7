"""Atomic writes, and the one rule for what the library may delete.

**Writes.** A reader (or a crash) never sees half a file: data is written into
a *staging directory* of ours beside the target, flushed to disk, and renamed
over the target with ``os.replace`` (atomic on POSIX).  A new directory is
built inside a staging directory and renamed into place whole
(:func:`publish_dir`); the members of an existing one are replaced one by one
(:func:`swap_members`), each old member kept as a hard-linked backup inside the
staging directory until the last one is in.  Files get the mode ``open(path,
"w")`` would give (``0o666`` minus the umask), directories ``0o777`` minus it.

**Deletion: only what carries our exact marker.**  Every temporary the library
makes lives in a staging directory that holds a marker file, :data:`MARKER`,
whose text names that very directory: its name, its device and inode, and the
pid and host of the process that made it.  :func:`is_ours` compares the marker
with the directory it sits in, so a user's copy (``cp -r`` gives a new inode),
a renamed folder (another name), or a folder that only looks like ours
(``.ck.tmp-mine``, ``.ck.old-backup``) is never ours.  :func:`remove_stale`
deletes a staging directory only when it is ours *and* the process that made
it is gone; nothing is ever deleted because of its name.  The only other
deletions are of files this process has just created itself (a failed write's
own staging directory).

The marker appears whole or not at all (an ``O_TMPFILE`` linked in), so a kill
between ``mkdtemp`` and the marker leaves an *empty* directory with our
prefix; :func:`remove_stale` removes such a directory with ``rmdir``, which the
kernel refuses for any directory that holds something -- it cannot lose data.
"""

import errno
import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator

from icr_interp.storage.jsonio import plain

MARKER = ".icr_interp-owned"  # the marker file inside every staging directory of ours
STAGING = ".icr_interp-staging-"  # prefix of staging directory names (a name alone proves nothing)
PROBE_PREFIX = ".icr_interp-write-test-"  # check_creatable's probe file, where O_TMPFILE is unavailable
_MARKER_HEAD = "icr_interp staging directory v1"
EMPTY_GRACE = 60.0  # seconds before an empty unmarked staging directory of another process may be rmdir'ed


# ------------------------------------------------------------------ modes and flushing
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


# ------------------------------------------------------------------ the marker
def _marker_text(directory: Path, pid: int, host: str) -> str:
    st = os.lstat(directory)
    return f"{_MARKER_HEAD}\nname {directory.name}\ninode {st.st_dev}:{st.st_ino}\npid {pid}\nhost {host}\n"


def staging_dir(parent: str | Path) -> Path:
    """A new empty staging directory of ours in ``parent`` (created), carrying its marker."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=STAGING, dir=parent))
    try:
        os.chmod(tmp, dir_mode())  # mkdtemp makes 0700
        _link_whole(tmp / MARKER, _marker_text(tmp, os.getpid(), socket.gethostname()).encode("utf-8"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # made by this process a moment ago
        raise
    return tmp


def _link_whole(path: Path, data: bytes) -> None:
    """Create ``path`` holding ``data`` so that it appears complete or not at all (a kill leaves no half file).

    Linux: an unnamed ``O_TMPFILE`` is written, then linked in.  Elsewhere one ``write`` of a few
    hundred bytes (a kill cannot split a system call; only a crash of the machine could).
    """
    try:
        fd = os.open(path.parent, os.O_TMPFILE | os.O_WRONLY, 0o644)
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.write(fd, data)
            # a dst_dir_fd makes Python call linkat(AT_SYMLINK_FOLLOW): the file behind the fd is linked,
            # not the /proc symlink itself
            os.link(f"/proc/self/fd/{fd}", path.name, dst_dir_fd=directory, follow_symlinks=True)
            return
        except OSError:
            pass  # no /proc: write it directly below
        finally:
            os.close(fd)
            os.close(directory)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def owner(directory: str | Path) -> tuple[int, str] | None:
    """(pid, host) of the process that made ``directory`` if it carries our exact marker; else None."""
    directory = Path(directory)
    try:
        if not directory.is_dir() or directory.is_symlink() or not (directory / MARKER).is_file():
            return None
        text = (directory / MARKER).read_text(encoding="utf-8")
        fields = dict(line.split(" ", 1) for line in text.splitlines()[1:] if " " in line)
        pid, host = int(fields["pid"]), fields["host"]
        return (pid, host) if text == _marker_text(directory, pid, host) else None
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        return None


def is_ours(directory: str | Path) -> bool:
    """Whether ``directory`` is a staging directory this library made (its marker names it exactly)."""
    return owner(directory) is not None


def _abandoned(directory: Path) -> bool:
    """Ours, and its maker (on this host) has exited: nothing will use it again."""
    made = owner(directory)
    if made is None or made[1] != socket.gethostname():
        return False
    if made[0] == os.getpid():
        return False  # a write of this very process may be using it
    try:
        os.kill(made[0], 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive (another user's process)
    return False


def remove_if_ours(directory: str | Path) -> bool:
    """Delete ``directory`` if it carries our exact marker (the only way the library deletes a directory)."""
    directory = Path(directory)
    if owner(directory) is None:
        return False
    shutil.rmtree(directory, ignore_errors=True)
    return True


def staging_dirs(parent: str | Path) -> list[Path]:
    """Our staging directories in ``parent`` (marker checked), newest first."""
    try:
        found = [p for p in Path(parent).iterdir() if p.name.startswith(STAGING) and is_ours(p)]
    except OSError:
        return []
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def remove_stale(parent: str | Path, locked: bool = False) -> list[Path]:
    """Delete the staging directories in ``parent`` that are ours and whose process has exited.

    ``locked``: the caller holds the lock under which every user of these directories works (a checkpoint
    directory being saved in place), so no live process can be using one: all of ours go.
    """
    removed = []
    for stale in staging_dirs(parent):
        if (locked or _abandoned(stale)) and remove_if_ours(stale):
            removed.append(stale)
    removed += _remove_unmarked_empty(parent, locked)
    return removed


def _remove_unmarked_empty(parent: str | Path, locked: bool) -> list[Path]:
    """``rmdir`` the empty directories a kill between ``mkdtemp`` and the marker's link left (loses nothing).

    ``rmdir`` refuses a directory that holds anything, so no file can be lost; without ``locked``, only
    directories untouched for :data:`EMPTY_GRACE` seconds, so a write that is just starting keeps its own.
    """
    removed = []
    try:
        candidates = [p for p in Path(parent).iterdir() if p.name.startswith(STAGING) and not p.is_symlink()]
    except OSError:
        return removed
    for p in candidates:
        try:
            if locked or time.time() - os.lstat(p).st_mtime > EMPTY_GRACE:
                os.rmdir(p)
                removed.append(p)
        except OSError:
            pass  # not empty, or gone: not ours to touch
    return removed


@contextmanager
def staging(parent: str | Path) -> Iterator[Path]:
    """A staging directory of ours in ``parent`` for the duration of the block, removed afterwards."""
    tmp = staging_dir(parent)
    try:
        yield tmp
    finally:
        remove_if_ours(tmp)


# ------------------------------------------------------------------ files
def write_with(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Atomically create or replace ``path`` with what ``write(tmp)`` writes (``write`` must create ``tmp``).

    The file gets :func:`file_mode` whatever created it (a Rust writer, ``mkstemp``).
    """
    path = Path(path)
    with staging(path.parent) as tmp_dir:
        tmp = tmp_dir / path.name
        write(tmp)
        os.chmod(tmp, file_mode())
        _fsync_file(tmp)
        os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def stage(path: str | Path, write: Callable[[Path], None], into: str | Path | None = None) -> Path:
    """A complete, fsynced file named like ``path`` holding what ``write(tmp)`` wrote, not yet in place.

    It lies in the staging directory ``into`` (default: a new one beside ``path``), ready for
    :func:`swap_members`.  It gets :func:`file_mode` whatever created it.
    """
    path = Path(path)
    tmp = Path(into if into is not None else staging_dir(path.parent)) / path.name
    write(tmp)
    os.chmod(tmp, file_mode())
    _fsync_file(tmp)
    return tmp


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


def check_creatable(path: str | Path) -> None:
    """OSError (one line) unless a file could be created at ``path`` now: tried, not guessed from permissions.

    The nearest existing ancestor must be a directory in which a file can be
    created: an unnamed ``O_TMPFILE`` (nothing to leave behind), or where the
    filesystem lacks it a probe file removed at once.
    """
    path = Path(path).absolute()
    ancestor = next((p for p in (path, *path.parents) if p.exists()), None)
    if ancestor is None:
        return
    if not ancestor.is_dir():
        ancestor = ancestor.parent
    try:
        try:
            os.close(os.open(ancestor, os.O_TMPFILE | os.O_WRONLY, 0o600))
            return
        except (AttributeError, OSError) as e:
            if isinstance(e, OSError) and e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        fd, probe = tempfile.mkstemp(prefix=PROBE_PREFIX, dir=ancestor)
    except OSError as e:
        raise OSError(e.errno, f"cannot create files in {ancestor}: {e.strerror or e}") from None
    os.close(fd)
    Path(probe).unlink(missing_ok=True)  # created by this process a moment ago


# ------------------------------------------------------------ directories
def temp_dir(target: str | Path) -> Path:
    """A new empty directory to build ``target`` in: ``content`` inside a staging directory beside it."""
    target = Path(target)
    content = staging_dir(target.parent) / "content"
    content.mkdir(mode=dir_mode())
    return content


def publish_dir(tmp: str | Path, target: str | Path) -> None:
    """Rename the complete directory ``tmp`` (from :func:`temp_dir`) to ``target``, which must be free or empty.

    Its files get :func:`file_mode` and are flushed to disk first; the staging
    directory around it is removed afterwards.
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
    finally:
        remove_if_ours(tmp.parent)
    fsync_dir(target.parent)


def swap_members(directory: str | Path, staged: Iterable[tuple[str, Path]]) -> None:
    """Replace members of ``directory`` by staged files, in the given order.

    The staged files must lie in one staging directory of ours inside
    ``directory`` (:func:`staging_dir`).  Each existing member is first
    hard-linked (or copied) into that staging directory as ``NAME.old``; the
    staging directory goes only once every member is in.  A crash in between
    leaves the previous version of each replaced member there
    (:func:`backups`); nothing else in ``directory`` is touched.
    """
    directory = Path(directory)
    stage_dirs = set()
    for name, new in staged:
        new = Path(new)
        stage_dirs.add(new.parent)
        current = directory / name
        if current.exists():
            backup = new.parent / f"{name}.old"
            try:
                os.link(current, backup)
            except OSError:  # no hard links on this filesystem
                shutil.copy2(current, backup)
        fsync_dir(new.parent)
        os.replace(new, current)
    fsync_dir(directory)
    for tmp in stage_dirs:
        remove_if_ours(tmp)


def restore_backup(backup: str | Path, member: str | Path) -> None:
    """Put a backup left by an interrupted :func:`swap_members` back in place of ``member`` (one atomic rename)."""
    os.replace(backup, member)
    fsync_dir(Path(member).parent)


def backups(path: str | Path) -> list[Path]:
    """Previous versions of member ``path`` that an interrupted :func:`swap_members` left, newest first."""
    path = Path(path)
    found = [d / f"{path.name}.old" for d in staging_dirs(path.parent)]
    return [p for p in found if p.is_file()]


def __getattr__(name: str):  # the old storage.fsio facade is an alias of this module (icr_interp._moved)
    from icr_interp._moved import module_attr

    return module_attr(__name__, name)
