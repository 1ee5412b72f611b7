"""Advisory locks: an exclusive ``flock`` on a file or a directory, released by the kernel when its process dies.

:class:`FileLock` locks a file (a sweep's results file, created if missing,
never deleted) and keeps its descriptor open for appending;
:func:`lock_dir` locks a directory itself (a checkpoint being saved in place),
so no lock file ever appears among a user's files.  ``kill -9`` releases both.
"""

import os
import time
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Iterator

from icr_interp.storage.atomic import file_mode


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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, file_mode())
        self._fd = _flock(fd, self.path, self.wait, self.timeout, self.on_wait,
                          f"{self.path} is locked by another process (another sweep writing it?)")
        return self

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


@contextmanager
def lock_dir(directory: str | Path, timeout: float | None = 600.0) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` itself for the block (waits; LockBusy after ``timeout`` s)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    _flock(fd, Path(directory), True, timeout, None, f"{directory} is locked by another process saving it")
    try:
        yield
    finally:
        os.close(fd)


def _flock(fd: int, path: Path, wait: bool, timeout: float | None, on_wait, busy: str) -> int:
    import fcntl

    deadline = None if timeout is None else time.monotonic() + timeout
    told = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if not wait or (deadline is not None and time.monotonic() > deadline):
                os.close(fd)
                raise LockBusy(busy) from None
            if not told and on_wait is not None:
                on_wait(f"waiting for {path}: another process holds its lock")
            told = True
            time.sleep(0.02)
