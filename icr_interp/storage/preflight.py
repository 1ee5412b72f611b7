"""Preflight for outputs: every path the library will write is checked *before* any work, in one place.

:func:`check_path` turns what the operating system would refuse later into
one-line ``ValueError`` now: a NUL byte in the path, a name longer than the
filesystem allows (``ENAMETOOLONG``), an ancestor that cannot be searched
(``EACCES``) or is a file, a dangling symbolic link, and ``..`` after a folder
that does not exist (``nothere/../ck``, which would otherwise create
``nothere``).  :func:`output_dir` and :func:`output_file` add what each kind
of output needs: a directory target that is a symbolic link is followed (the
files go where it points, the link stays), ``.`` and other existing empty
directories are written into, and a file target must not be a folder.

Size limits are the other half of preflight: :mod:`icr_interp.task.limits`
estimates memory from a config before anything is allocated.
"""

import errno
import os
from pathlib import Path

from icr_interp.plumbing import one_line

PATH_MAX = 4096  # Linux; a longer path is refused before the kernel says ENAMETOOLONG


def check_path(path, what: str = "path") -> Path:
    """``path`` as a Path if the operating system could create it; a one-line ValueError otherwise."""
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if text is None:
        raise ValueError(f"{what} must be a path, got {type(path).__name__}")
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if "\x00" in text:
        raise ValueError(f"{what} {text!r}: a path may not contain a NUL byte")
    if not text:
        raise ValueError(f"{what} is empty")
    if len(os.fsencode(text)) >= PATH_MAX:
        raise ValueError(f"{what}: the path is {len(os.fsencode(text))} bytes long; the limit is {PATH_MAX - 1}")
    path = Path(text)
    limit = _name_max(path)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise ValueError(f"{what} {_short(text)}: the name {_short(part)} is {len(os.fsencode(part))} bytes "
                             f"long; this filesystem allows {limit}")
    _check_ancestors(path, what)
    return path


def _name_max(path: Path) -> int:
    for p in (path.absolute(), *path.absolute().parents):
        try:
            return os.pathconf(p, "PC_NAME_MAX")
        except (OSError, ValueError):
            continue
    return 255


def _short(text: str, n: int = 60) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _check_ancestors(path: Path, what: str) -> None:
    """Walk the path's prefixes: each must resolve; the walk stops at the first missing one."""
    current = Path(path.anchor) if path.is_absolute() else Path(".")
    missing = None
    for part in (path.parts[1:] if path.anchor else path.parts):
        if missing is not None:
            if part == "..":
                raise ValueError(f"{what} {path}: {missing} does not exist, so {missing}/.. cannot be resolved "
                                 f"(write the path without it)")
            continue
        current = current / part
        try:
            st = os.stat(current)
        except FileNotFoundError:
            if os.path.islink(current) and current != path:
                raise ValueError(f"{what} {path}: {current} is a dangling symbolic link") from None
            missing = current
            continue
        except NotADirectoryError:
            raise ValueError(f"{what} {path}: {current.parent} is not a directory") from None
        except PermissionError:
            raise ValueError(f"{what} {path}: permission denied: cannot reach {current} "
                             f"(its folder {current.parent} cannot be searched)") from None
        except OSError as e:
            raise ValueError(f"{what} {path}: {current}: {e.strerror or e}") from None
        if current != path and not _is_dir(st):
            raise ValueError(f"{what} {path}: {current} is not a directory")


def _is_dir(st: os.stat_result) -> bool:
    import stat

    return stat.S_ISDIR(st.st_mode)


def output_dir(path, what: str = "--out") -> Path:
    """The directory to write an output folder at: checked (:func:`check_path`), a symlink followed.

    A dangling symbolic link is refused (writing would replace the link or fail after the work).
    """
    path = check_path(path, what)
    if path.is_symlink():
        if not path.exists():
            raise ValueError(f"{what} {path} is a dangling symbolic link (to {os.readlink(path)})")
        path = path.resolve()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} exists and is not a directory")
    _check_writable(path, what)
    return path


def output_file(path, what: str = "--out") -> Path:
    """A file to create or replace: checked (:func:`check_path`), not a folder, its folder writable."""
    path = check_path(path, what)
    if path.is_symlink() and not path.exists():
        raise ValueError(f"{what} {path} is a dangling symbolic link (to {os.readlink(path)})")
    if path.exists() and not path.is_file():
        raise ValueError(f"{what} {path} exists and is not a file (a folder?)")
    _check_writable(path, what)
    return path


def _check_writable(path: Path, what: str) -> None:
    from icr_interp.storage.atomic import check_creatable

    try:
        check_creatable(path / "probe" if path.is_dir() else path)
    except OSError as e:
        reason = "permission denied" if e.errno in (errno.EACCES, errno.EPERM) else one_line(e)
        raise ValueError(f"{what} {path}: {reason}") from None
