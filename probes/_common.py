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
from pathlib import Path
from typing import Callable

from icr_interp.plumbing import OneLineParser, UsageError, int_arg, one_line, run_main, seed_arg  # noqa: F401

DEFAULT_N_PROMPTS = 128


def help_texts(doc: str) -> dict:
    """ProbeParser keywords from a script docstring: title as description, the text after the usage as epilog."""
    paragraphs = doc.strip().split("\n\n")
    return dict(description=paragraphs[0], epilog="\n\n".join(paragraphs[3:]),
                formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """CHECKPOINT, --n-prompts, --seed, --out, --force, --device."""
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT",
                        help=f"checkpoint directory (config.json + model.safetensors){what}")
    parser.add_argument("--n-prompts", type=int_arg("--n-prompts", 1), default=DEFAULT_N_PROMPTS, metavar="N",
                        help=f"prompts to sample (default {DEFAULT_N_PROMPTS})")
    parser.add_argument("--seed", type=seed_arg, default=0, metavar="S",
                        help="seeds the prompts (derive_seed(S, 'analysis')) and their corruptions "
                             "(derive_seed(S, 'corrupt')); default 0")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory (default: a new directory under runs/)")
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it is not empty (files of the same name are replaced, "
                             "and listed)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")


def check_common(args, prefix: str, single: str | None = None) -> None:
    """Checks every probe makes before any work; sets ``args.kind``, ``args.out`` (checked writable) and
    ``args.existing`` (the names already in ``args.out``, so that what ``--force`` replaces can be listed).

    ``single``: the program name if it takes exactly one checkpoint (a series is refused).  A path the OS
    refuses (no permission, a name too long, a NUL byte) is a bad argument too: one line, exit 2.
    """
    from icr_interp.experiments import checkpoint_analysis as probing

    try:
        args.kind = probing.checkpoint_kind(args.checkpoint)
        if single and args.kind != "checkpoint":
            raise UsageError(f"{args.checkpoint} is a directory of checkpoints; {single} takes one checkpoint")
        check_device(args.device)
        args.out = probing.output_dir(args.out, args.force, prefix, args.checkpoint)
        args.existing = {p.name for p in args.out.iterdir()} if args.out.is_dir() else set()
    except probing.ProbeInputError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError) as e:  # UsageError included: it is a ValueError
        raise UsageError(one_line(e)) from None


def check_device(device: str) -> None:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UsageError("--device cuda requested but CUDA is not available")


def probe_main(parser: argparse.ArgumentParser, check: Callable, run: Callable, argv: list[str] | None) -> int:
    """Parse, check (``check(args)`` may raise UsageError), run, with :func:`icr_interp.plumbing.run_main`'s
    one-line errors and exit codes (2 bad argument, 1 failure, 130 Ctrl-C)."""

    def body() -> int:
        args = parser.parse_args(argv)
        check(args)
        return run(args)

    return run_main(parser.prog, body)


def report_files(paths: list[Path], args=None) -> None:
    """Print what was written, and which of those files ``--force`` replaced."""
    print("wrote " + ", ".join(str(p) for p in paths))
    replaced = sorted(Path(p).name for p in paths if Path(p).name in getattr(args, "existing", ()))
    if replaced:
        print(f"replaced (--force) in {args.out}: " + ", ".join(replaced))
