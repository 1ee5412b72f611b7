"""Shared command-line pieces of the case studies: output folders, atomic files (errors: icr_interp.plumbing)."""

import argparse
from pathlib import Path

from icr_interp.plumbing import OneLineParser as Parser, int_arg, seed_arg  # noqa: F401  (Parser: the scripts' name)

positive = int_arg("value", 1)  # an argparse type: an integer >= 1
seed = seed_arg  # an argparse type: a seed in [0, 2**63)


def learning_rate(text: str) -> float | None:
    """``--lr``: a positive number, or ``auto`` (None: finetune's per-parametrisation default)."""
    if text == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'auto', got {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0 or 'auto', got {text!r}")
    return value


def out_dir(parser: argparse.ArgumentParser, path: str) -> Path:
    """Create the output folder (exit 2 with one line if that is impossible)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out} exists and is not a directory")
    from icr_interp.storage import atomic

    try:
        atomic.check_creatable(out / "probe")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--out {out}: {e}")
    return out


def write_json(path: Path, data) -> None:
    from icr_interp.storage import atomic, jsonio

    atomic.write_json(path, jsonio.json_safe(data), indent=2)


def save_figure(fig, path: Path) -> None:
    from icr_interp.storage import atomic

    atomic.write_with(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=110,
                                                    bbox_inches="tight"))


def setup_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
