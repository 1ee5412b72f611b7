"""Argument helpers of the probe scripts: one parser, one-line errors, exit codes.

Conventions (the same as the ``icr-interp`` command):

* a bad argument -- a path that is not a checkpoint, ``--n-prompts 0``, a
  seed outside [0, 2**63), options that do not go together, an output
  directory that would be overwritten or cannot be written -- prints one line
  ``PROG: error: ...`` on stderr and exits 2, before any work;
* a failure while running (a checkpoint that does not validate, a task that
  cannot make the corruption) prints one line and exits 1;
* no traceback either way.

Everything else -- checkpoint discovery, output preflight, the analyses,
the report -- is :mod:`icr_interp.experiments.checkpoint_analysis`.
"""

import argparse
import sys
from pathlib import Path
from typing import Callable

DEFAULT_N_PROMPTS = 128


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


def seed(text: str) -> int:
    """An argparse type for seeds: :func:`icr_interp.seeds.check_seed` (an integer in [0, 2**63))."""
    from icr_interp.seeds import check_seed

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seed must be an integer, got {text!r}") from None
    try:
        return check_seed(value, "--seed")
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_common_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """CHECKPOINT, --n-prompts, --seed, --out, --force, --device."""
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help=f"checkpoint directory (config.json + model.safetensors){what}")
    parser.add_argument("--n-prompts", type=int_at_least(1, "--n-prompts"), default=DEFAULT_N_PROMPTS, metavar="N",
                        help=f"prompts to sample (default {DEFAULT_N_PROMPTS})")
    parser.add_argument("--seed", type=seed, default=0, metavar="S",
                        help="seeds the prompts (derive_seed(S, 'analysis')) and their corruptions "
                             "(derive_seed(S, 'corrupt')); default 0")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory (default: a new directory under runs/)")
    parser.add_argument("--force", action="store_true", help="write into --out even if it is not empty")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")


def check_common(args, prefix: str, single: str | None = None) -> None:
    """Checks every probe makes before any work; sets ``args.kind`` and ``args.out`` (checked writable).

    ``single``: the program name if it takes exactly one checkpoint (a series is refused).
    """
    from icr_interp.experiments import checkpoint_analysis as probing

    try:
        args.kind = probing.checkpoint_kind(args.checkpoint)
        if single and args.kind != "checkpoint":
            raise UsageError(f"{args.checkpoint} is a directory of checkpoints; {single} takes one checkpoint")
        check_device(args.device)
        args.out = probing.output_dir(args.out, args.force, prefix, args.checkpoint)
    except probing.ProbeInputError as e:
        raise UsageError(str(e)) from None


def check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but CUDA is not available")


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
