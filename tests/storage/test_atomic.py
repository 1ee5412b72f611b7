"""storage.atomic / locks (re-exported by fsio): the one module that renames files into place -- atomic writes,
directory publishing, member swaps, cleanup that never deletes foreign files, modes from the umask, and locks."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from icr_interp.storage import atomic, fsio

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
    path = fsio.write_with(tmp_path / "a" / "f.bin", lambda tmp: tmp.write_bytes(b"x"))
    os.chmod(path, 0o600)
    fsio.write_with(path, lambda tmp: (tmp.write_bytes(b"y"), os.chmod(tmp, 0o600)))  # a writer that makes 0600
    assert path.read_bytes() == b"y" and os.stat(path).st_mode & 0o777 == fsio.file_mode()
    with pytest.raises(RuntimeError):
        fsio.write_with(path, lambda tmp: (tmp.write_bytes(b"half"), (_ for _ in ()).throw(RuntimeError("boom"))))
    assert path.read_bytes() == b"y" and sorted(os.listdir(path.parent)) == ["f.bin"]  # temporary removed
    old = os.umask(0o077)
    try:
        assert fsio.file_mode() == 0o600 and fsio.dir_mode() == 0o700
    finally:
        os.umask(old)


def test_publish_dir_needs_a_free_or_empty_target(tmp_path):
    tmp = fsio.temp_dir(tmp_path / "d")
    (tmp / "a").write_text("1")
    (tmp_path / "d").mkdir()
    fsio.publish_dir(tmp, tmp_path / "d")  # an empty directory is replaced
    assert (tmp_path / "d" / "a").read_text() == "1"
    tmp2 = fsio.temp_dir(tmp_path / "d")
    with pytest.raises(OSError, match="is not empty"):
        fsio.publish_dir(tmp2, tmp_path / "d")
    assert (tmp_path / "d" / "a").read_text() == "1"


def test_swap_members_keeps_backups_until_the_last_member_is_in(tmp_path, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    for name in ("w", "c", "user.txt"):
        (d / name).write_text(f"old {name}")
    stage = fsio.staging_dir(d)
    staged = [(name, fsio.stage(d / name, lambda t, n=name: t.write_text(f"new {n}"), into=stage))
              for name in ("w", "c")]
    real = os.replace

    def crash_on_c(src, dst):
        if Path(dst).name == "c":
            raise OSError("crash")
        real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", crash_on_c)
    with pytest.raises(OSError, match="crash"):
        fsio.swap_members(d, staged)
    monkeypatch.undo()
    assert (d / "w").read_text() == "new w" and (d / "c").read_text() == "old c"
    assert [p.read_text() for p in fsio.backups(d / "w")] == ["old w"]
    assert fsio.remove_stale(d) == []  # its maker (this process) is alive: it may still be using it
    assert fsio.remove_if_ours(stage) and (d / "user.txt").read_text() == "old user.txt"
    assert sorted(os.listdir(d)) == ["c", "user.txt", "w"]


def test_check_creatable_tries_instead_of_guessing(tmp_path):
    fsio.check_creatable(tmp_path / "new" / "deeper" / "file")
    assert os.listdir(tmp_path) == []  # the probe is gone
    with pytest.raises(OSError, match="cannot create files in"):
        fsio.check_creatable("/proc/icr-interp-test/file")


def test_file_lock_excludes_a_second_process(tmp_path):
    path = tmp_path / "r.jsonl"
    code = ("from icr_interp.storage import locks\n"  # the storage layer alone: no torch, no TransformerLens
            f"try:\n    locks.FileLock({str(path)!r}, wait=False).acquire()\n"
            "except locks.LockBusy as e:\n    print(e)\n")
    with fsio.FileLock(path) as lock:
        os.write(lock.fd, b"x\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stdout
    assert out.strip() == f"{path} is locked by another process (another sweep writing it?)"
    with fsio.FileLock(path, wait=False):  # released: free again
        pass
    assert path.read_text() == "x\n"
