"""Run a script's ``main(argv)`` in this process (no interpreter start-up), its output captured.

The probe scripts and the case studies are thin: ``main`` parses, calls the library and writes files, so a
test loses nothing by calling it here instead of in a new interpreter (seconds of imports saved per call).
Both folders have a helper module named ``_common``; each script gets its own folder's.
"""

import contextlib
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load(folder: str, script: str):
    """The script as a fresh module, importing its own folder's ``_common``."""
    where = str(REPO / folder)
    saved = sys.modules.pop("_common", None)
    sys.path.insert(0, where)
    try:
        spec = importlib.util.spec_from_file_location(f"{folder}_{script[:-3]}", REPO / folder / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(where)
        sys.modules.pop("_common", None)
        if saved is not None:
            sys.modules["_common"] = saved
    return module


def run_main(folder: str, script: str, *args) -> subprocess.CompletedProcess:
    """``main([...args])`` of ``folder/script`` in this process: a CompletedProcess with its code and output."""
    module = load(folder, script)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else int(e.code is not None)
    return subprocess.CompletedProcess([script, *map(str, args)], code or 0, out.getvalue(), err.getvalue())
