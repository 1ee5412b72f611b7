"""The quick-start notebook: committed clean, and it runs, and its numbers are right.

``case_studies/quickstart.ipynb`` is executed with nbclient in a kernel that runs
*this* interpreter (a kernelspec written to a temporary directory whose argv is
``sys.executable``), so the notebook sees the same environment as the tests,
whatever other ``python3`` kernels the machine has.  It runs on a copy in a
temporary directory; nothing is written back into the repository.

The notebook ends with a cell tagged ``summary`` that prints one JSON line;
the assertions read the numbers from it.  Cells are found by their tags, not
their index, so prose can be added without breaking the test.
"""

import json
import re
import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "case_studies" / "quickstart.ipynb"
KERNEL_NAME = "icr-interp-test"
CELL_TIMEOUT_S = 300  # per cell; the whole notebook takes ~15 s on one core
TOTAL_BUDGET_S = 120  # the quick start promises well under a minute; allow a loaded machine

# A script fetched from elsewhere: <script src="https://...">, src="//...", import ... from "https://...".
REMOTE_SCRIPT = re.compile(
    r"""(?:<script\b[^>]*\bsrc\s*=\s*["']?|\bimport\b[^;]*?\bfrom\s*["']|\bimport\s*\(\s*["'])(?:https?:)?//""",
    re.IGNORECASE)


# ----------------------------------------------------------------- helpers
def _cell(nb, tag: str):
    """The one code cell carrying ``tag``."""
    found = [c for c in nb.cells if c.cell_type == "code" and tag in c.get("metadata", {}).get("tags", [])]
    assert len(found) == 1, f"expected exactly one code cell tagged {tag!r}, found {len(found)}"
    return found[0]


def _data(cell, mime: str) -> list[str]:
    """Every ``mime`` payload among a cell's display/execute_result outputs."""
    out = []
    for o in cell.outputs:
        if o.output_type in ("execute_result", "display_data") and mime in o.get("data", {}):
            value = o["data"][mime]
            out.append("".join(value) if isinstance(value, list) else value)
    return out


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _write_kernelspec(directory: Path) -> None:
    """A kernelspec running this interpreter (the notebook picks its own thread count, as for a student)."""
    spec = directory / KERNEL_NAME
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "icr_interp tests", "language": "python",
    }))


# ----------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """The notebook executed in a temporary copy: ``(notebook, seconds)``."""
    root = tmp_path_factory.mktemp("notebook")
    work = root / "work"
    work.mkdir()
    shutil.copy(NOTEBOOK, work / NOTEBOOK.name)
    _write_kernelspec(root / "kernels")
    nb = nbformat.read(work / NOTEBOOK.name, as_version=4)
    km = KernelManager(kernel_name=KERNEL_NAME,
                       kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(root / "kernels")]))
    client = NotebookClient(nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(work)}})
    start = time.perf_counter()
    try:
        client.execute(cleanup_kc=True)
    finally:
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    seconds = time.perf_counter() - start
    nbformat.write(nb, work / "executed.ipynb")  # kept in the temporary directory for debugging
    return nb, seconds


@pytest.fixture(scope="module")
def summary(executed) -> dict:
    lines = [line for line in _stdout(_cell(executed[0], "summary")).splitlines() if line.strip()]
    assert lines, "the summary cell printed nothing"
    return json.loads(lines[-1])


# ------------------------------------------------------------ the committed file
def test_committed_notebook_is_clean():
    """STYLE rule 10: outputs cleared, no execution counts, valid nbformat."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for i, cell in enumerate(code):
        assert cell.outputs == [], f"code cell {i} has committed outputs"
        assert cell.execution_count is None, f"code cell {i} has execution_count {cell.execution_count}"
        assert "execution" not in cell.metadata, f"code cell {i} keeps execution timing metadata"
    raw = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    assert all(c.get("outputs", []) == [] for c in raw["cells"])  # also what git sees
    for tag in ("attention-view", "query-attention-plot", "summary"):
        _cell(nb, tag)


# ------------------------------------------------------------ the executed notebook
@pytest.mark.slow  # executes the notebook: ~30 s on a quiet machine, a minute when loaded
def test_notebook_runs_quickly(executed):
    nb, seconds = executed
    assert seconds < TOTAL_BUDGET_S, f"the quick start took {seconds:.0f} s"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


@pytest.mark.slow  # executes the notebook: ~30 s on a quiet machine, a minute when loaded
def test_finetuning_reaches_pairwise(summary):
    assert summary["accuracy_after"] >= 0.95
    assert summary["loss_after"] < 0.1 * summary["loss_before"]
    # The start is deliberately not pairwise, so the end point means something.
    assert summary["best_before"] != "pairwise"
    assert summary["best_after"] == "pairwise"
    assert summary["best_after_mean_row"] == "pairwise"
    assert summary["pairwise_after"] >= summary["pairwise_before"] + 0.2
    assert summary["balance_after"] >= summary["balance_before"] + 0.3


@pytest.mark.slow  # executes the notebook: ~30 s on a quiet machine, a minute when loaded
def test_patching_tables_are_consistent(summary):
    """Patching every position that differs restores the clean run; identical positions do nothing."""
    rel, query = summary["relation_swap"], summary["query_swap"]
    assert rel["answers"] == pytest.approx(1.0, abs=1e-3)  # the relation swap changes only the answers
    assert rel["context"] == pytest.approx(1.0, abs=1e-3)
    assert rel["subjects"] == pytest.approx(0.0, abs=1e-3)
    assert query["query"] == pytest.approx(1.0, abs=1e-3)  # the query swap changes only the query
    assert query["context"] == pytest.approx(0.0, abs=1e-3)


@pytest.mark.slow  # executes the notebook: ~30 s on a quiet machine, a minute when loaded
def test_attention_view_renders_offline(executed):
    pages = _data(_cell(executed[0], "attention-view"), "text/html")
    assert len(pages) == 1, "the circuitsvis cell must leave its view as the cell's HTML output"
    page = pages[0]
    assert "circuits-vis-" in page and "CircuitsVis" in page  # the container and the inlined bundle
    assert "query:s" in page and "s1:s" in page and "a1:a" in page  # tokens labelled by role
    assert "unpkg" not in page.lower()
    assert REMOTE_SCRIPT.search(page) is None, "the view loads a script from the network"


@pytest.mark.slow  # executes the notebook: ~30 s on a quiet machine, a minute when loaded
def test_query_attention_plot_is_an_image(executed):
    assert _data(_cell(executed[0], "query-attention-plot"), "image/png"), "the figure did not render as PNG"


@pytest.mark.slow  # executes the notebook: ~30 s on a quiet machine, a minute when loaded
def test_repository_copy_untouched(executed):
    """Executing wrote nothing back: the committed notebook still has no outputs."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    assert any(c.outputs for c in executed[0].cells if c.cell_type == "code")  # while the copy has them
