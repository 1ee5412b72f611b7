"""Shared command-line plumbing for the case studies: one-line argument errors, output folders, atomic files."""

import argparse
import sys
from pathlib import Path

import torch

from icr_interp.storage import fsio


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {' '.join(message.split())}\n")
        sys.exit(2)


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**63), got {value}")
    return value


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
    try:
        fsio.check_creatable(out / "probe")
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        parser.error(f"--out {out}: {e}")
    return out


def write_json(path: Path, data) -> None:
    fsio.write_json(path, fsio.json_safe(data), indent=2)


def save_figure(fig, path: Path) -> None:
    fsio.write_with(path, lambda tmp: fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=110,
                                                  bbox_inches="tight"))


def setup_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
