"""Shared plumbing of the probe scripts: arguments, checkpoints, output directories, files.

Conventions (the same as the ``icr-interp`` command):

* a bad argument -- a path that is not a checkpoint, ``--n-prompts 0``,
  options that do not go together, an output directory that would be
  overwritten -- prints one line ``PROG: error: ...`` on stderr and exits 2;
* a failure while running (a checkpoint that does not validate, a task that
  cannot make the corruption) prints one line and exits 1;
* no traceback either way.

The heavy imports (torch, TransformerLens, icr_interp) happen only once the
arguments are checked, so usage errors are immediate.  Analyses live in
``icr_interp``; this module only finds checkpoints, names output directories
and writes files.
"""

import argparse
import json
import math
import os
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

CONFIG = "config.json"  # the file that makes a directory a checkpoint (icr_interp.checkpoint.CONFIG)
DEFAULT_N_PROMPTS = 128
RUNS = Path("runs")  # default parent of output directories


class UsageError(Exception):
    """A bad argument, found after parsing; reported like argparse's errors (exit 2)."""


class ProbeParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)}\n")


def help_texts(doc: str) -> dict:
    """ProbeParser keywords from a script docstring: title as description, the text after the usage as epilog."""
    paragraphs = doc.strip().split("\n\n")
    return dict(description=paragraphs[0], epilog="\n\n".join(paragraphs[3:]),
                formatter_class=argparse.RawDescriptionHelpFormatter)


def one_line(message) -> str:
    return " ".join(str(message).split()) or "unknown error"


# ------------------------------------------------------------------ arguments
def int_at_least(low: int, what: str) -> Callable[[str], int]:
    """An argparse type accepting integers >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{what} must be >= {low}, got {value}")
        return value

    return parse


def add_common_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """CHECKPOINT, --n-prompts, --seed, --out, --force, --device."""
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help=f"checkpoint directory (config.json + model.safetensors){what}")
    parser.add_argument("--n-prompts", type=int_at_least(1, "--n-prompts"), default=DEFAULT_N_PROMPTS, metavar="N",
                        help=f"prompts to sample (default {DEFAULT_N_PROMPTS})")
    parser.add_argument("--seed", type=int_at_least(0, "--seed"), default=0, metavar="S",
                        help="seeds the prompts (S) and their corruptions (S + 1); default 0")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory (default: a new directory under runs/)")
    parser.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")


def check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but CUDA is not available")


# ------------------------------------------------------------------ checkpoints
@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint of a directory of checkpoints."""

    name: str  # its directory name
    step: int | None  # training step (metrics "step", else the last number in its name, else train.steps)
    path: Path  # its directory


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file()


def checkpoint_kind(path: Path) -> str:
    """``"checkpoint"`` or ``"series"`` (a directory of checkpoints); UsageError otherwise."""
    if not path.exists():
        raise UsageError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise UsageError(f"not a checkpoint: {path} is a file (a checkpoint is a directory with {CONFIG} "
                         "and model.safetensors)")
    if is_checkpoint(path):
        return "checkpoint"
    if _children(path):
        return "series"
    raise UsageError(f"no checkpoints in {path}: neither it nor any subdirectory has a {CONFIG}")


def _children(path: Path) -> list[Path]:
    """Checkpoint subdirectories, hidden ones (interrupted saves: .NAME.old-*, .NAME.tmp-*) excluded."""
    try:
        entries = sorted(path.iterdir())
    except OSError:
        return []
    return [p for p in entries if not p.name.startswith(".") and is_checkpoint(p)]


def _step(path: Path) -> int | None:
    """The training step of a checkpoint, read from its config.json or its name."""
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        config = {}
    config = config if isinstance(config, dict) else {}
    metrics = config.get("metrics") if isinstance(config.get("metrics"), dict) else {}
    step = metrics.get("step")
    if isinstance(step, int) and not isinstance(step, bool):
        return step
    numbers = re.findall(r"\d+", path.name)
    if numbers:
        return int(numbers[-1])
    train = config.get("train") if isinstance(config.get("train"), dict) else {}
    steps = train.get("steps")
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def find_checkpoints(path: Path) -> list[CheckpointEntry]:
    """The checkpoints in the subdirectories of ``path``, by step (unknown steps last, then by name)."""
    entries = [CheckpointEntry(p.name, _step(p), p) for p in _children(path)]
    return sorted(entries, key=lambda e: (e.step is None, e.step if e.step is not None else 0, e.name))


def load(path: Path, device: str = "cpu"):
    """Load a checkpoint (an :class:`icr_interp.Checkpoint`)."""
    import icr_interp

    return icr_interp.load_checkpoint(path, device=device)


# ------------------------------------------------------------------ output directory
def output_dir(out: Path | None, force: bool, prefix: str, checkpoint: Path) -> Path:
    """Where to write: ``--out`` (checked), or a fresh ``runs/PREFIX-NAME[-i]``.

    An existing non-empty ``--out`` is refused unless ``force``; it may never be
    the checkpoint itself (its files would be mixed with the analysis').
    """
    if out is None:
        base = RUNS / f"{prefix}-{checkpoint.resolve().name or 'checkpoint'}"
        candidate, i = base, 2
        while _non_empty(candidate) or candidate.is_file():
            candidate, i = base.with_name(f"{base.name}-{i}"), i + 1
        return candidate
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    if out.exists() and checkpoint.exists() and out.resolve() == checkpoint.resolve():
        raise UsageError(f"--out {out} is the checkpoint directory itself; choose another")
    if _non_empty(out) and not force:
        raise UsageError(f"--out {out} is not empty; pass --force to write into it")
    ancestor = next((p for p in out.absolute().parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise UsageError(f"--out {out}: {ancestor} is not a directory")
    return out


def _non_empty(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


# ------------------------------------------------------------------ files
def plain(value):
    """JSON-safe values: non-finite floats become None (strict JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def write_bytes(path: Path, data: bytes) -> Path:
    """Write atomically (temporary file in the same directory, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"  # open(..., "xb"): the umask's mode
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: Path, data: dict) -> Path:
    return write_bytes(path, (json.dumps(plain(data), indent=1, allow_nan=False) + "\n").encode("utf-8"))


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def stack_pngs(pngs: list[bytes]) -> bytes:
    """PNG images stacked vertically (left-aligned on white), pixels unchanged."""
    import io

    import numpy as np
    from matplotlib import image

    if len(pngs) == 1:
        return pngs[0]
    arrays = [image.imread(io.BytesIO(p), format="png")[..., :3] for p in pngs]
    width = max(a.shape[1] for a in arrays)
    padded = [np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=1.0) for a in arrays]
    buf = io.BytesIO()
    image.imsave(buf, np.concatenate(padded, axis=0), format="png")
    return buf.getvalue()


# ------------------------------------------------------------------ main
def run_main(parser: argparse.ArgumentParser, check: Callable, run: Callable, argv: list[str] | None) -> int:
    """Parse, check (``check(args)`` may raise UsageError), run; one-line errors and exit codes."""
    try:
        args = parser.parse_args(argv)
        check(args)
    except SystemExit as e:  # argparse: --help (0) or a bad argument (2)
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    except UsageError as e:
        print(f"{parser.prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except (ValueError, OSError, KeyError, RuntimeError, ImportError) as e:  # CheckpointError is a ValueError
        print(f"{parser.prog}: error: {one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130


def report_files(paths: list[Path]) -> None:
    print("wrote " + ", ".join(str(p) for p in paths))


# ------------------------------------------------------------------ analyses
KINDS = {"relation": ("relation",), "query": ("query",), "both": ("relation", "query")}


def role_patching(model, task, batch, kinds: tuple[str, ...], seed: int, method: str = "exact") -> dict:
    """Role-based patching of ``batch`` for each corruption kind: hook x role and query-row pattern x role.

    Returns:
        ``{kind: {"by_role": RolePatchResult, "pattern_by_role": RolePatchResult}}``;
        exact patching (:func:`icr_interp.patching.patch_by_role`) or its
        first-order estimate (:func:`~icr_interp.patching.attribution_patch`).
    """
    from icr_interp import patching as P

    pattern_hooks = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    results = {}
    for kind in kinds:
        corrupted = task.corrupt(batch, kind, seed=seed)
        if method == "exact":
            results[kind] = dict(by_role=P.patch_by_role(model, batch, corrupted),
                                 pattern_by_role=P.patch_pattern_by_role(model, batch, corrupted))
        else:
            results[kind] = dict(by_role=P.attribution_patch(model, batch, corrupted),
                                 pattern_by_role=P.attribution_patch(model, batch, corrupted, hooks=pattern_hooks))
    return results


def patching_png(results: dict) -> bytes:
    """One heatmap per corruption kind (hook and pattern rows x roles), stacked into one PNG."""
    import numpy as np

    from icr_interp import viz

    pngs = []
    for kind, res in results.items():
        by_role, pattern = res["by_role"], res["pattern_by_role"]
        matrix = np.concatenate([by_role.values.numpy(), pattern.values.numpy()], axis=0)
        rows = by_role.components + [f"{c} (query row)" for c in pattern.components]
        title = (f"{kind} swap: {by_role.method} patching ({by_role.mode})\n0 = corrupted "
                 f"(logit diff {by_role.corrupted_value:.2f}), 1 = clean ({by_role.clean_value:.2f})")
        pngs.append(viz.figure_png(viz.plot_patching(matrix, rows, by_role.roles, title)))
    return stack_pngs(pngs)


def plot_series(series, columns: tuple[str, ...] = ("relation", "lookup", "accuracy_drop")):
    """Every circuit component against the training step, one panel per column (patching effects, ablation)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    titles = dict(relation="relation swap (relation inference): normalised patching effect",
                  lookup="query swap (answer lookup): normalised patching effect",
                  accuracy_drop="ablation: accuracy drop on clean prompts")
    fig = Figure(figsize=(9.0, 0.8 + 2.4 * len(columns)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(columns), 1, sharex=True, squeeze=False)[:, 0]
    x = series.x()
    labels = {r.component.key: r.component.label for s in series.summaries for r in s.rows}
    # Components often coincide (0 or 1): distinct markers and dashes keep every line visible.
    styles = [(m, ls) for ls in ("-", "--", ":") for m in ("o", "s", "^", "D", "v", "x", "P", "*")]
    for ax, column in zip(axes, columns):
        for i, component in enumerate(series.components):
            marker, ls = styles[i % len(styles)]
            ax.plot(x, series.values(component, column), marker=marker, ls=ls, ms=5, lw=1.2, alpha=0.85,
                    markerfacecolor="none", label=f"{component}: {labels[component]}")
        ax.set_title(titles.get(column, column), fontsize=10)
        ax.axhline(0, color="#999", lw=0.6)
        ax.axhline(1, color="#999", lw=0.6, ls=":")
        ax.set_ylim(-0.1, 1.1) if _within_unit(series, column) else None
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("training step" if all(s is not None for s in series.steps) else "checkpoint")
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _within_unit(series, column: str) -> bool:
    values = [v for c in series.components for v in series.values(c, column)]
    return all(-0.1 <= v <= 1.1 for v in values)


def check_single_checkpoint(args, prog: str, name: str) -> None:
    """Checks shared by the probes that take exactly one checkpoint; fills in ``args.out``."""
    if checkpoint_kind(args.checkpoint) != "checkpoint":
        raise UsageError(f"{args.checkpoint} is a directory of checkpoints; {prog} takes one checkpoint")
    check_device(args.device)
    args.out = output_dir(args.out, args.force, name, args.checkpoint)
