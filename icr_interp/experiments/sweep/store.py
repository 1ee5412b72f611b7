"""The results file of a sweep: one JSON record per finished run, appended, locked and validated.

The file is the sweep's state.  A record is a JSON object with at least a
``key`` (the run's :attr:`RunConfig.key`) and a numeric ``accuracy``; a sweep
started again on the same file skips every key already there.

* **Appends are durable**: one line per run, flushed and fsynced before the
  next run is recorded, so ``kill -9`` loses at most the run in flight.  A kill
  mid-write can leave a truncated last line; the next writer cuts it off (it
  is the only thing ever removed, and only the bytes after the last newline).
* **One writer at a time**: :class:`ResultsStore` holds an exclusive lock on
  the file (:class:`icr_interp.storage.locks.FileLock`) for the whole sweep and reads
  the finished keys only once it holds it, so two sweeps on one file record
  each run exactly once; the second waits (or, with ``wait=False``, exits
  with one line).  The kernel drops the lock of a killed process.
* **Every line is validated**: ``null``, ``[]``, a record without ``key`` or
  ``accuracy``, or damage anywhere but the last line raise :class:`ResultsError`,
  one line naming the file and the line.  A complete last record without its
  newline (an editor's save) gets one before the next append.  Records are
  strict JSON (NaN as ``null``).
* **Versioned records**: every record written carries ``"format": "icr_interp-sweep/1"``
  (:data:`FORMAT`).  A record without one was written before records were versioned (format 0) and is
  read through :data:`MIGRATIONS` (0 -> 1: the field is added; no other field changed meaning); a format
  this code does not know (a newer toolkit's) is a one-line :class:`ResultsError`, never guessed at.
* **The CSV summary** (:func:`summary_path`: ``X.csv`` beside ``X.jsonl``, never the
  results file itself) holds every record of the file and is written while the
  lock is held, so concurrent sweeps leave the union; it replaces only a CSV a
  sweep wrote (:func:`check_summary`).
"""

import csv
import hashlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from collections.abc import Callable, Sequence

from icr_interp.experiments.sweep.grid import axes_of
from icr_interp.storage import atomic
from icr_interp.storage.jsonio import dumps_strict, json_safe
from icr_interp.storage.locks import FileLock


class ResultsError(ValueError):
    """A results file holds something that is not a run's record (one line: file and line)."""


FORMAT = "icr_interp-sweep/1"  # the format of the records this code writes
# One rule per old format: (format read, what it becomes, the rule).  Format 0 = no "format" field.
MIGRATIONS = (("icr_interp-sweep/0", FORMAT, lambda record: {**record, "format": FORMAT}),)


def migrate(record: dict, where: str) -> dict:
    """``record`` in the current :data:`FORMAT`, through the rules of :data:`MIGRATIONS` (ResultsError if unknown)."""
    found = record.get("format", "icr_interp-sweep/0")
    for source, target, rule in MIGRATIONS:
        if found == source:
            record, found = rule(record), target
    if found != FORMAT:
        raise ResultsError(f"{where}: record format {found!r:.60} is not one this version reads ({FORMAT}); "
                           f"use the toolkit that wrote it or another --out")
    return record


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
    return migrate(value, where)


def parse(data: bytes, path: Path) -> tuple[list[dict], int | None]:
    """(records, cut): ``cut`` is the byte length to truncate a killed write's partial last line to, or None.

    Lines are split on the byte ``\\n`` only (so line numbers are what ``wc -l`` and editors count).  The
    last line, when no newline follows it, may be a write cut short -- also in the middle of a UTF-8
    character -- and is then dropped, not the whole file refused.  A complete last line without its
    newline (an editor's save) is a record like any other.
    """
    records, offset = [], 0
    lines = data.split(b"\n")
    for i, raw in enumerate(lines):
        start, offset = offset, offset + len(raw) + 1
        last = i == len(lines) - 1  # no newline after it: a write may have been cut short
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            if last:
                return _truncated(records, path, i, start)
            raise ResultsError(f"{path}:{i + 1}: byte {e.start + 1} of the line is not UTF-8, so it is not a "
                               f"run's record; the sweep leaves the file as it is (fix that line or use another "
                               f"--out)") from None
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except (json.JSONDecodeError, RecursionError, ValueError) as e:
            if last:
                return _truncated(records, path, i, start)
            where = f" ({e.msg} at column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
            raise ResultsError(f"{path}:{i + 1}: damaged result line{where}; only a last line without a newline "
                               f"can be a run killed mid-write, so the sweep leaves the file as it is (fix that "
                               f"line or use another --out)") from None
        records.append(check_record(value, f"{path}:{i + 1}"))
    return records, None


def _truncated(records: list[dict], path: Path, index: int, start: int) -> tuple[list[dict], int]:
    warnings.warn(f"{path}:{index + 1}: ignoring a truncated last line (a run killed mid-write)")
    return records, start


def _read(path: Path) -> bytes:
    return path.read_bytes()


def load_results(path: str | Path) -> list[dict]:
    """The records of a results file (validated; a truncated last line is ignored; missing file: [])."""
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise ResultsError(f"{path} is not a file")
    return parse(_read(path), path)[0]


def summary_path(out: str | Path) -> Path:
    """Where a sweep writing ``out`` puts its CSV summary: ``X.csv`` beside ``X.jsonl``, never ``out`` itself."""
    out = Path(out)
    return out.with_name(out.stem + ".summary.csv") if out.suffix.lower() == ".csv" else out.with_suffix(".csv")


def _digest_path(csv_path: Path) -> Path:
    return csv_path.with_name(f".{csv_path.name}.icr_interp-sha256")


def check_summary(csv_path: str | Path) -> None:
    """ValueError (one line) unless the summary CSV may be (re)written: missing, or unchanged since a sweep wrote it.

    A sweep records the sha256 of the CSV it writes beside it (``.X.csv.icr_interp-sha256``); a file whose
    bytes do not match that record -- a user's own ``X.csv``, or a summary edited since -- is never replaced.
    """
    csv_path = Path(csv_path)
    if csv_path.is_symlink() or csv_path.exists():
        if not csv_path.is_file() or csv_path.is_symlink():
            raise ValueError(f"the sweep's summary {csv_path} exists and is not a regular file; move it away")
        digest = _digest_path(csv_path)
        try:
            recorded = digest.read_text(encoding="utf-8").strip() if digest.is_file() else None
            actual = hashlib.sha256(csv_path.read_bytes()).hexdigest()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the sweep's summary {csv_path}: {e.strerror or e}") from None
        if recorded != actual:
            raise ValueError(f"refusing to overwrite {csv_path}: it was not written by a sweep (or was edited "
                             f"since); move it away to get the sweep's summary there")


class ResultsStore:
    """The results file, locked for appending (a context manager).

    Args:
        path: the JSONL file (created if missing).
        wait: if another process holds the lock, wait for it (``log`` says so in one
            line); otherwise raise :class:`icr_interp.storage.locks.LockBusy` at once.
        log: called with one line when waiting.
    """

    def __init__(self, path: str | Path, wait: bool = True, log: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.lock = FileLock(self.path, wait=wait, on_wait=log)
        self.done: dict[str, dict] = {}

    def __enter__(self) -> "ResultsStore":
        if self.path.exists() and not self.path.is_file():
            raise ResultsError(f"{self.path} is not a file")
        self.lock.acquire()
        try:
            data = _read(self.path)
            records, cut = parse(data, self.path)
            if cut is not None:
                os.ftruncate(self.lock.fd, cut)  # drop the partial line of a killed write
                os.fsync(self.lock.fd)
            elif data and not data.endswith(b"\n"):
                self._write(b"\n")  # a complete last record without its newline (an editor's save)
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
        record = check_record(json_safe(record), str(self.path))  # NaN as null: strict JSON
        self._write((dumps_strict(record) + "\n").encode("utf-8"))
        self.done.setdefault(record["key"], record)
        return record

    def _write(self, data: bytes) -> None:
        while data:  # O_APPEND: always at the end
            data = data[os.write(self.lock.fd, data):]
        os.fsync(self.lock.fd)

    def write_summary(self, csv_path: str | Path) -> Path:
        """The CSV of every record in the file (all sweeps'), written while the lock is held, with its digest."""
        csv_path = Path(csv_path)
        check_summary(csv_path)
        to_csv(list(self.done.values()), csv_path)
        atomic.write_text(_digest_path(csv_path), hashlib.sha256(csv_path.read_bytes()).hexdigest() + "\n")
        return csv_path


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
    return atomic.write_text(path, buffer.getvalue())


def _cell(value):
    return repr(value) if isinstance(value, float) and not math.isfinite(value) else value
