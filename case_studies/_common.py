"""Shared command-line plumbing for the case studies (argument errors, output folders, files)."""

import argparse
import json
import sys
from pathlib import Path

import torch


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit code 2."""

    def error(self, message: str) -> None:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def out_dir(path: str) -> Path:
    """Create the output folder; refuse a path that is a file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=lambda x: x.tolist() if hasattr(x, "tolist") else str(x)))
    tmp.replace(path)


def save_figure(fig, path: Path) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")


def setup_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
