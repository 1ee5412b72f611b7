"""The results file of a sweep: one JSON record per finished run, appended, locked and validated.

The file is the sweep's state.  A record is a JSON object with at least a
``key`` (the run's :attr:`RunConfig.key`) and a numeric ``accuracy``; a sweep
started again on the same file skips every key already there.

* **Appends are durable**: one line per run, flushed and fsynced before the
  next run is recorded, so ``kill -9`` loses at most the run in flight.  A kill
  mid-write can leave a truncated last line; the next writer cuts it off (it
  is the only thing ever removed, and only the bytes after the last newline).
* **One writer at a time**: :class:`ResultsStore` holds an exclusive lock on
  the file (:class:`icr_interp.storage.fsio.FileLock`) for the whole sweep and reads
  the finished keys only once it holds it, so two sweeps on one file record
  each run exactly once; the second waits (or, with ``wait=False``, exits
  with one line).  The kernel drops the lock of a killed process.
* **Every line is validated**: ``null``, ``[]``, a record without ``key`` or
  ``accuracy``, or damage anywhere but the last line raise :class:`ResultsError`,
  one line naming the file and the line.
"""

import csv
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Callable, Sequence

from icr_interp.storage import fsio
from icr_interp.experiments.sweep.grid import axes_of


class ResultsError(ValueError):
    """A results file holds something that is not a run's record (one line: file and line)."""


def check_record(value, where: str) -> dict:
    """``value`` if it is a run record (object, string ``key``, numeric ``accuracy``); ResultsError otherwise."""
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        raise ResultsError(f"{where}: expected a JSON object (a run's record), got {kind}")
    if not isinstance(value.get("key"), str) or not value["key"]:
        raise ResultsError(f"{where}: record has no run 'key'")
    acc = value.get("accuracy")
    if isinstance(acc, bool) or not isinstance(acc, (int, float)):
        raise ResultsError(f"{where}: record {value['key']} has no numeric 'accuracy' (got {acc!r:.40})")
    return value


def parse(text: str, path: Path) -> tuple[list[dict], int | None]:
    """(records, cut): ``cut`` is the byte length to truncate a killed write's partial last line to, or None."""
    records, offset = [], 0
    lines = text.split("\n")
    for i, line in enumerate(lines):
        start, offset = offset, offset + len(line.encode("utf-8")) + 1
        if not line.strip():
            continue
        last = i == len(lines) - 1  # no newline after it: a write may have been cut short
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError):
            if not last:
                raise ResultsError(f"{path}:{i + 1}: damaged result line (not the last line, so not a kill "
                                   f"mid-write); fix or remove it") from None
            warnings.warn(f"{path}:{i + 1}: ignoring a truncated last line (a run killed mid-write)")
            return records, start
        records.append(check_record(value, f"{path}:{i + 1}"))
    return records, None


def _read(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ResultsError(f"{path}: byte {e.start} is not UTF-8: not a results file") from None


def load_results(path: str | Path) -> list[dict]:
    """The records of a results file (validated; a truncated last line is ignored; missing file: [])."""
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise ResultsError(f"{path} is not a file")
    return parse(_read(path), path)[0]


class ResultsStore:
    """The results file, locked for appending (a context manager).

    Args:
        path: the JSONL file (created if missing).
        wait: if another process holds the lock, wait for it (``log`` says so in one
            line); otherwise raise :class:`icr_interp.storage.fsio.LockBusy` at once.
        log: called with one line when waiting.
    """

    def __init__(self, path: str | Path, wait: bool = True, log: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.lock = fsio.FileLock(self.path, wait=wait, on_wait=log)
        self.done: dict[str, dict] = {}

    def __enter__(self) -> "ResultsStore":
        if self.path.exists() and not self.path.is_file():
            raise ResultsError(f"{self.path} is not a file")
        self.lock.acquire()
        try:
            records, cut = parse(_read(self.path), self.path)
            if cut is not None:
                os.ftruncate(self.lock.fd, cut)  # drop the partial line of a killed write
                os.fsync(self.lock.fd)
        except BaseException:
            self.lock.release()
            raise
        for rec in records:
            self.done.setdefault(rec["key"], rec)
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def append(self, record: dict) -> dict:
        """Write one validated record, on disk before this returns."""
        record = check_record(fsio.plain(record), str(self.path))
        data = (json.dumps(record) + "\n").encode("utf-8")
        while data:  # O_APPEND: always at the end
            data = data[os.write(self.lock.fd, data):]
        os.fsync(self.lock.fd)
        self.done.setdefault(record["key"], record)
        return record


def flat(record: dict) -> dict:
    """A record with its config's axes (seed, n_samples, ...) as top-level fields and without ``config``."""
    return {**axes_of(record), **{k: v for k, v in record.items() if k != "config"}}


def to_csv(results: Sequence[dict], path: str | Path) -> Path:
    """Write results as CSV (atomically): one column per field of :func:`flat`, lists and dicts as JSON."""
    rows = [flat(r) for r in results]
    columns = list(dict.fromkeys(name for row in rows for name in row))
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else _cell(v) for k, v in row.items()})
    return fsio.write_text(path, buffer.getvalue())


def _cell(value):
    return repr(value) if isinstance(value, float) and not math.isfinite(value) else value
