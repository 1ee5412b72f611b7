"""The package's architecture, checked from outside: layers, cycles, sizes, one table of hook names, aliases.

Issue 18's acceptance checks as tests, so that a later change cannot flatten the package again without failing
the suite: the import contract in pyproject.toml (import-linter's ``layers``), no import cycle between modules, no
library module importing the package root, at most 12 modules at the top level, every module under 400 lines,
hook names spelled only by ``icr_interp.model.hooks``, one one-line error formatter, and the first release's
names resolving through one alias table with a DeprecationWarning.
"""

import ast
import importlib
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "icr_interp"
MODULES = sorted(PKG.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_import_contract_holds():
    """import-linter's layers contract (pyproject.toml [tool.importlinter]): experiments > viz : storage >
    pipeline > analysis > training > model > task | tl."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a [dev] dependency (make setup installs it)"
    done = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_the_contract_fails_on_an_upward_import(tmp_path):
    """The contract can fail: a copy of the package in which the task layer imports the analysis layer breaks it."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    copy = tmp_path / "repo"
    shutil.copytree(PKG, copy / "icr_interp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    ceiling = copy / "icr_interp" / "task" / "ceiling.py"
    ceiling.write_text(ceiling.read_text() + "\nfrom icr_interp.analysis import templates  # noqa\n")
    done = subprocess.run([exe, "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "BROKEN" in done.stdout.upper()


def test_attention_scoring_may_not_import_a_causal_analysis(tmp_path):
    """The analysis layer's own contract can fail: a scoring module that imports a causal analysis breaks it."""
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    copy = tmp_path / "repo"
    shutil.copytree(PKG, copy / "icr_interp", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    rows = copy / "icr_interp" / "analysis" / "scoring" / "attention.py"
    rows.write_text(rows.read_text() + "\nfrom icr_interp.analysis.causal import reliability  # noqa\n")
    done = subprocess.run([exe, "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0 and "analysis: attention scoring below causal analyses" in done.stdout
    assert "1 kept, 1 broken" in done.stdout


def _imports(path: Path) -> set[str]:
    """Every icr_interp module a file imports (module level and inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names if a.name.startswith("icr_interp")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("icr_interp"):
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_no_import_cycles():
    modules = {_module_name(p): p for p in MODULES}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # A package's __init__ re-exporting its own submodules is not a cycle of the layers; drop parent edges.
    graph = {name: {m for m in deps if not name.startswith(m + ".") and not m.startswith(name + ".")}
             for name, deps in graph.items()}
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node)
    assert cycles == []


def test_no_library_module_imports_the_package_root():
    offenders = []
    for path in MODULES:
        if path == PKG / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import) and any(a.name == "icr_interp" for a in node.names):
                offenders.append(str(path))
            if isinstance(node, ast.ImportFrom) and node.module == "icr_interp":
                offenders.append(str(path))
    assert offenders == []


def test_sizes():
    top = [p.name for p in PKG.glob("*.py")]
    assert len(top) <= 12, top
    long = {str(p.relative_to(REPO)): n for p in MODULES if (n := len(p.read_text().splitlines())) >= 400}
    assert long == {}


def test_scripts_are_thin():
    """Scripts parse, call the library and write files: under 150 lines each (their logic lives in icr_interp)."""
    long = {str(p.relative_to(REPO)): n for folder in ("probes", "case_studies") for p in (REPO / folder).glob("*.py")
            if (n := len(p.read_text().splitlines())) >= 150}
    assert long == {}


def test_hook_names_are_spelled_in_one_place():
    offenders = [str(p.relative_to(REPO)) for p in MODULES
                 if p.name != "hooks.py" and re.search(r"blocks\.0\.|f\"blocks\.\{|f'blocks\.\{", p.read_text())]
    assert offenders == []


def test_one_one_line_formatter():
    defs = [str(p.relative_to(REPO)) for folder in ("icr_interp", "probes", "case_studies")
            for p in (REPO / folder).rglob("*.py")
            if re.search(r"^def _?one_line\w*\(", p.read_text(), re.M)]
    assert defs == ["icr_interp/plumbing.py"]


def test_the_code_imports_no_old_name():
    """Library, probes, case studies and benchmarks use the layered paths, never the alias table's old ones (old
    modules, renamed modules, and renamed attributes imported by name)."""
    from icr_interp._moved import MOVED, MOVED_ATTRS, RENAMED

    old = {f"icr_interp.{name}" for name in (*MOVED, *RENAMED)}
    old_attrs = {f"{owner}.{name}" for owner, names in MOVED_ATTRS.items() for name in names}
    offenders = []
    for folder in ("icr_interp", "probes", "case_studies", "benchmarks"):
        for path in (REPO / folder).rglob("*.py"):
            for name in _imports(path):
                parent = name.rpartition(".")[0]
                if name in old or parent in old or any(name.startswith(o + ".") for o in old) or name in old_attrs:
                    offenders.append(f"{path.relative_to(REPO)}: {name}")
    assert offenders == []


def test_hook_table():
    from icr_interp.model import hooks as H

    assert H.hook(0, "pattern") == "blocks.0.attn.hook_pattern"
    assert H.hook(3, "relation") == "blocks.3.mlp.hook_relation"
    assert H.split("blocks.12.attn.hook_z") == (12, "z") and H.split("hook_embed") is None
    with pytest.raises(ValueError, match="unknown hook site"):
        H.hook(0, "hook_pattern")


def _hook_name_collections(path: Path) -> list[str]:
    """Literal tuples/lists/sets/dicts in ``path`` holding two or more hook leaf names (``"hook_z"``), or module-level
    constants holding two or more site names of the table (``("z", "pattern")``; for a dict, among its values)."""
    from icr_interp.model import hooks as H

    tree, found = ast.parse(path.read_text()), []

    def strings(node, keys: bool = True) -> list[str]:
        items = (node.keys if keys else node.values) if isinstance(node, ast.Dict) else node.elts
        return [e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)]

    collections = (ast.Tuple, ast.List, ast.Set, ast.Dict)
    for node in ast.walk(tree):
        if isinstance(node, collections) and sum(".hook_" in v or v.startswith("hook_") for v in strings(node)) >= 2:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    for node in tree.body:  # module-level constants of site names
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, collections):
            if sum(v in H.TABLE for v in strings(node.value, keys=False)) >= 2:  # a dict's keys may be labels
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_no_module_but_the_hook_table_classifies_hook_names():
    """One table of sites (model/hooks.py): no other library module lists hook names (the 4.x mirror of
    TransformerLens's own HookedTransformer, which *declares* those hook points, aside)."""
    exempt = {PKG / "model" / "hooks.py", PKG / "tl" / "mirror.py"}
    offenders = [hit for p in MODULES if p not in exempt for hit in _hook_name_collections(p)]
    assert offenders == []


def test_the_hook_collection_check_can_fail(tmp_path):
    bad = REPO / "icr_interp" / "_probe_check_tmp.py"
    try:
        bad.write_text('HEADS = ("hook_z", "hook_q")\nSITES = ["z", "pattern"]\n')
        assert len(_hook_name_collections(bad)) == 2  # the leaf names, then the module-level site names
    finally:
        bad.unlink()


def test_the_table_classifies_every_site():
    from icr_interp.model import hooks as H
    from icr_interp.model.memory.base import MemoryModule

    assert H.kind("blocks.2.attn.hook_pattern") == H.kind("blocks.0.attn.hook_attn_scores") == "pattern"
    assert H.kind("blocks.1.attn.hook_z") == "head" and H.kind("blocks.0.hook_resid_pre") == H.kind("hook_embed") == "pos"
    assert H.stage("blocks.0.attn.hook_z") == "attn_out" and H.stage("blocks.0.hook_mlp_in") is None
    assert H.kv_heads("blocks.4.attn.hook_k") and not H.kv_heads("blocks.4.attn.hook_q")
    assert not H.windowed("blocks.0.attn.hook_rot_k") and H.windowed("blocks.0.attn.hook_k")
    memory = MemoryModule("pair")
    memory_leaves = tuple(s.path.rpartition(".")[2] for s in H.TABLE.values() if s.memory)  # on the memory module
    assert memory_leaves == tuple(n for n, _ in memory.named_modules() if n.startswith("hook_"))
    assert {H.TABLE[s].job for s in H.TABLE if H.TABLE[s].job} == {"relation_inference", "answer_lookup"}


def test_memory_registry():
    from icr_interp.model import memory as M

    assert M.impl_names() == ("dense", "factored", "sparse")
    assert M.check_impl("auto", auto=True) == "auto"
    with pytest.raises(ValueError, match="memory_impl must be one of"):
        M.check_impl("auto")
    with pytest.raises(ValueError, match="registered twice"):
        M.register("dense")(lambda table, basis, construction: None)


OLD_PATHS = {"icr_interp.templates": "icr_interp.analysis.scoring.templates", "icr_interp.knowledge": "icr_interp.task.knowledge",
             "icr_interp.patching.core": "icr_interp.analysis.causal.patching.core",
             "icr_interp.checkpoint.schema": "icr_interp.storage.checkpoint.schema",
             "icr_interp.sweep": "icr_interp.experiments.sweep", "icr_interp.train": "icr_interp.training.trainer",
             "icr_interp.memory": "icr_interp.model.memory",
             # analysis/ grouped by meaning: a renamed package's submodules follow it
             "icr_interp.analysis.patching.engine": "icr_interp.analysis.causal.patching.engine",
             "icr_interp.analysis.pairing_test": "icr_interp.analysis.scoring.pairing_test",
             "icr_interp.analysis.weight_probes": "icr_interp.analysis.weights.weight_probes"}


@pytest.mark.parametrize("old,new", sorted(OLD_PATHS.items()))
def test_old_import_paths_resolve_to_the_same_module_with_a_warning(old, new):
    import icr_interp._moved as moved

    moved._warned.discard(old)
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    if not old.startswith("icr_interp.patching"):  # ii.patching is a kept public name
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
                   and f"removed in {moved.REMOVED_IN}" in str(w.message) for w in caught)


def _layer_rank(module: str) -> int | None:
    """Position of ``module``'s layer in the import contract (0 = top), or None outside the layers."""
    import tomllib

    layers = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]["layers"]
    for rank, layer in enumerate(layers):
        if any(module == m or module.startswith(m + ".") for m in re.split(r"\s*[:|]\s*", layer)):
            return rank
    return None


def test_no_alias_points_from_a_lower_layer_to_a_higher_one():
    """A renamed attribute resolved by string (``module_attr``) is an import the contract cannot see: it must not
    go upward (e.g. analysis.job_split.fine_tuned -> experiments.shapes, removed)."""
    from icr_interp._moved import MOVED_ATTRS

    upward = []
    for owner, names in MOVED_ATTRS.items():
        for old, new in names.items():
            low, high = _layer_rank(owner), _layer_rank(new.rpartition(".")[0])
            if low is not None and high is not None and high < low:
                upward.append(f"{owner}.{old} -> {new}")
    assert upward == []
    assert _layer_rank("icr_interp.experiments.shapes") < _layer_rank("icr_interp.analysis.causal.job_split")  # can fail


_DOTTED = re.compile(r"icr_interp(?:\.\w+)+")  # a module path: "icr_interp.experiments.shapes[:fn]"


def _string_modules(source: str) -> list[str]:
    """The icr_interp modules a source names in strings, i.e. imports the contract cannot see: a string that is a
    dotted path (``importlib.import_module("icr_interp.experiments.shapes")``, ``__import__(...)``, a
    ``"module:function"`` entry) or an f-string that starts with one (``f"icr_interp.viz.{name}"``)."""
    tree, found = ast.parse(source), []
    inside_fstrings = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    for node in ast.walk(tree):
        if id(node) in inside_fstrings:
            continue
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            text, whole = str(node.values[0].value), False  # f"icr_interp.experiments.{x}": its constant head
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            text, whole = node.value, True
        else:
            continue
        match = _DOTTED.match(text)
        if match and (not whole or re.fullmatch(r"[\w.]+(:\w+)?", text)):  # not prose that mentions a module
            found.append(match.group(0))
    return found


def _upward_string_imports(module: str, source: str) -> list[str]:
    """``module``'s string imports of a higher layer of the import contract."""
    low = _layer_rank(module)
    return [f"{module} -> {name}" for name in _string_modules(source)
            if low is not None and (high := _layer_rank(name)) is not None and high < low]


def test_no_string_import_of_a_higher_layer():
    """A lower layer resolving a higher one by string (e.g. the removed analysis.job_split.fine_tuned ->
    experiments.shapes) breaks the contract out of import-linter's sight; none is left."""
    offenders = [hit for p in MODULES for hit in _upward_string_imports(_module_name(p), p.read_text())]
    assert offenders == []


def test_the_string_import_check_can_fail():
    source = ('import importlib\n'
              'shapes = importlib.import_module("icr_interp.experiments.shapes")  # upward\n'
              'fits = __import__("icr_interp.experiments.fits", fromlist=["fit"])  # upward\n'
              'VIEW = f"icr_interp.viz.{1}"  # upward, built at run time\n'
              'ENTRY = "icr_interp.pipeline.runner:run"  # upward, a module:function entry\n'
              'SAME = importlib.import_module("icr_interp.analysis.stats")  # same layer: allowed\n'
              'DOWN = "icr_interp.task.roles"  # lower layer: allowed\n'
              '"""Prose that names icr_interp.experiments.shapes is no import."""\n')
    assert sorted(_upward_string_imports("icr_interp.analysis.job_split", source)) == [
        f"icr_interp.analysis.job_split -> icr_interp.{name}"
        for name in ("experiments.fits", "experiments.shapes", "pipeline.runner", "viz")]
    assert _upward_string_imports("icr_interp.experiments.shapes", source) == []  # the top layer may name any


def test_kept_names_and_root_exports_do_not_warn():
    import icr_interp as ii

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*moved to.*", category=DeprecationWarning)  # the alias table's
        for name in ii.__all__:
            assert getattr(ii, name) is not None
        from icr_interp.task import Batch, ICRecallTask, Layout  # noqa: F401 (old path, same package name)
        from icr_interp.model import ICRModel, build_model  # noqa: F401
        from icr_interp.pipeline import run  # noqa: F401
    assert callable(ii.run) and ii.patching.__name__ == "icr_interp.analysis.causal.patching"


def test_importing_the_package_is_light():
    code = ("import sys, icr_interp; heavy = [m for m in ('torch', 'transformer_lens', 'matplotlib', 'circuitsvis', "
            "'ray') if m in sys.modules]; print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "[]", done.stderr[-1000:]


def test_tests_mirror_the_package():
    """tests/<layer>/.../test_<module>.py follows icr_interp/<layer>/...; tests/safety/ (what the toolkit must
    never lose or let through) and tests/scripts/ (probes, case studies, the notebook, the command line) are the
    two cross-cutting folders. Basenames are unique: pytest imports test files by basename (no __init__.py)."""
    tests = REPO / "tests"
    folders = {p.relative_to(tests) for p in tests.rglob("*") if p.is_dir() and "__pycache__" not in p.parts
               and p.parts[len(tests.parts)] != "data"}
    strays = [str(f) for f in folders if f.parts[0] not in {"safety", "scripts"} and not (PKG / f).is_dir()]
    assert strays == []
    names = [p.name for p in tests.rglob("test_*.py")]
    assert len(names) == len(set(names)) and len(names) > 50
    assert [p.name for p in tests.glob("test_*.py")] == ["test_architecture.py"]  # the one package-wide file


def test_a_moved_analysis_module_is_still_an_attribute_of_the_package_with_a_warning():
    import icr_interp as ii
    import icr_interp._moved as moved
    from icr_interp.analysis.scoring import templates

    moved._warned.discard("icr_interp.analysis.templates")
    with pytest.warns(DeprecationWarning, match="analysis.templates moved to icr_interp.analysis.scoring.templates"):
        assert ii.analysis.templates is templates
    with pytest.raises(AttributeError, match="has no attribute 'nonsense'"):
        ii.analysis.nonsense
