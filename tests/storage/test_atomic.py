"""storage.atomic / locks (the old storage.fsio is an alias of atomic): the one module that renames files into
place -- atomic writes, directory publishing, member swaps, cleanup that never deletes foreign files, modes from
the umask, and locks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from icr_interp.storage import atomic, locks

REPO = Path(__file__).resolve().parents[2]


def test_only_atomic_renames_files_into_place():
    """Replacing files and directories (os.replace / rename) happens in icr_interp/storage/atomic.py only."""
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\.rename\(|\.replace\(tmp|shutil\.move\(")
    offenders = [str(p.relative_to(REPO)) for folder in ("icr_interp", "case_studies", "probes")
                 for p in (REPO / folder).rglob("*.py") if p.name != "atomic.py" and pattern.search(p.read_text())]
    assert offenders == []


def test_only_atomic_deletes_directories():
    """rmtree appears only in storage/atomic.py, behind the marker check (the one deletion rule)."""
    offenders = [str(p.relative_to(REPO)) for folder in ("icr_interp",) for p in (REPO / folder).rglob("*.py")
                 if p.name != "atomic.py" and "rmtree" in p.read_text()]
    assert offenders == []


def test_write_with_and_modes(tmp_path):
    path = atomic.write_with(tmp_path / "a" / "f.bin", lambda tmp: tmp.write_bytes(b"x"))
    os.chmod(path, 0o600)
    atomic.write_with(path, lambda tmp: (tmp.write_bytes(b"y"), os.chmod(tmp, 0o600)))  # a writer that makes 0600
    assert path.read_bytes() == b"y" and os.stat(path).st_mode & 0o777 == atomic.file_mode()
    with pytest.raises(RuntimeError):
        atomic.write_with(path, lambda tmp: (tmp.write_bytes(b"half"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert path.read_bytes() == b"y" and sorted(os.listdir(path.parent)) == ["f.bin"]  # temporary removed
    old = os.umask(0o077)
    try:
        assert atomic.file_mode() == 0o600 and atomic.dir_mode() == 0o700
    finally:
        os.umask(old)


def test_publish_dir_needs_a_free_or_empty_target(tmp_path):
    tmp = atomic.temp_dir(tmp_path / "d")
    (tmp / "a").write_text("1")
    (tmp_path / "d").mkdir()
    atomic.publish_dir(tmp, tmp_path / "d")  # an empty directory is replaced
    assert (tmp_path / "d" / "a").read_text() == "1"
    tmp2 = atomic.temp_dir(tmp_path / "d")
    with pytest.raises(OSError, match="is not empty"):
        atomic.publish_dir(tmp2, tmp_path / "d")
    assert (tmp_path / "d" / "a").read_text() == "1"


def test_swap_members_keeps_backups_until_the_last_member_is_in(tmp_path, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("w", "c", "user.txt"):
        (d / name).write_text(f"old {name}")
    stage = atomic.staging_dir(d)
    staged = [(name, atomic.stage(d / name, lambda t, n=name: t.write_text(f"new {n}"), into=stage))
              for name in ("w", "c")]
    real = os.replace

    def crash_on_c(src, dst):
        if Path(dst).name == "c":
            raise OSError("crash")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_on_c)
    with pytest.raises(OSError, match="crash"):
        atomic.swap_members(d, staged)
    monkeypatch.undo()
    assert (d / "w").read_text() == "new w" and (d / "c").read_text() == "old c"
    assert [p.read_text() for p in atomic.backups(d / "w")] == ["old w"]
    assert atomic.remove_stale(d) == []  # its maker (this process) is alive: it may still be using it
    assert atomic.remove_if_ours(stage) and (d / "user.txt").read_text() == "old user.txt"
    assert sorted(os.listdir(d)) == ["c", "user.txt", "w"]


def test_check_creatable_tries_instead_of_guessing(tmp_path):
    atomic.check_creatable(tmp_path / "new" / "deeper" / "file")
    assert os.listdir(tmp_path) == []  # the probe is gone
    with pytest.raises(OSError, match="cannot create files in"):
        atomic.check_creatable("/proc/icr-interp-test/file")


def test_file_lock_excludes_a_second_process(tmp_path):
    path = tmp_path / "r.jsonl"
    code = ("from icr_interp.storage import locks\n"  # the storage layer alone: no torch, no TransformerLens
            f"try:\n    locks.FileLock({str(path)!r}, wait=False).acquire()\n"
            "except locks.LockBusy as e:\n    print(e)\n")
    with locks.FileLock(path) as lock:
        os.write(lock.fd, b"x\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert out.strip() == f"{path} is locked by another process (another sweep writing it?)"
    with locks.FileLock(path, wait=False):  # released: free again
        pass
    assert path.read_text() == "x\n"


def test_the_old_fsio_facade_is_an_alias_of_atomic_with_a_warning():
    """``storage.fsio`` re-exported atomic, locks and jsonio; it is now the alias table's name for atomic, and its
    other names resolve through :data:`icr_interp._moved.MOVED_ATTRS`, each with a DeprecationWarning."""
    import importlib

    from icr_interp import _moved
    from icr_interp.storage import jsonio

    _moved._warned -= {"icr_interp.storage.fsio", "icr_interp.storage.atomic.FileLock"}  # each warns once
    sys.modules.pop("icr_interp.storage.fsio", None)
    with pytest.deprecated_call(match="storage.fsio moved to icr_interp.storage.atomic .* removed in 0.4"):
        fsio = importlib.import_module("icr_interp.storage.fsio")
    assert fsio is atomic and fsio.write_json is atomic.write_json and fsio.plain is jsonio.plain
    with pytest.deprecated_call(match="atomic.FileLock moved to icr_interp.storage.locks.FileLock"):
        assert fsio.FileLock is locks.FileLock
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        fsio.nonsense
