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

from icr_interp.plumbing import (OneLineParser, UsageError, exit_process, int_arg, one_line, run_main,  # noqa: F401
                                 seed_arg)

DEFAULT_N_PROMPTS = 128
DEFAULT_LM_PROMPTS = 32  # a real LM: 30 layers x 9 heads of patching on 2 cores


def help_texts(doc: str) -> dict:
    """ProbeParser keywords from a script docstring: title as description, the text after the usage as epilog."""
    paragraphs = doc.strip().split("\n\n")
    return dict(description=paragraphs[0], epilog="\n\n".join(paragraphs[3:]),
                formatter_class=argparse.RawDescriptionHelpFormatter)


def add_common_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """CHECKPOINT, --n-prompts, --seed, --out, --force, --device."""
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT", nargs="?",
                        help=f"checkpoint directory (config.json + model.safetensors){what}; or --model")
    parser.add_argument("--n-prompts", type=int_arg("--n-prompts", 1), default=None, metavar="N",
                        help=f"prompts to sample (default {DEFAULT_N_PROMPTS}, {DEFAULT_LM_PROMPTS} with --model)")
    parser.add_argument("--seed", type=seed_arg, default=0, metavar="S",
                        help="seeds the prompts (derive_seed(S, 'analysis')) and their corruptions "
                             "(derive_seed(S, 'corrupt')); default 0")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output directory (default: a new directory under runs/)")
    parser.add_argument("--force", action="store_true",
                        help="write into --out even if it is not empty (files of the same name are replaced, "
                             "and listed)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    lm = parser.add_argument_group("a real language model instead of a checkpoint")
    lm.add_argument("--model", metavar="NAME", help="a pretrained LM (icr_interp.pretrained_lm_names(): "
                    "smollm2-135m); its prompts come from --csv or --builtin")
    lm.add_argument("--csv", type=Path, metavar="FILE", help="knowledge base: a CSV of subject,relation,answer")
    lm.add_argument("--builtin", metavar="NAME", help="knowledge base: a built-in one (countries)")
    lm.add_argument("--k", type=int_arg("--k", 1, 64), default=3, help="context pairs per prompt (default 3)")
    lm.add_argument("--pair-template", default="{s}: {a}\n", metavar="T",
                    help="one context pair, naming {s} and {a} (default '{s}: {a}\\n')")
    lm.add_argument("--query-template", default="{s}:", metavar="T",
                    help="the query, naming {s} (default '{s}:')")


def check_model_arguments(args) -> bool:
    """Whether the probe runs on a real LM (``--model``); a one-line UsageError for options that do not go
    together. Cheap: nothing heavy is imported, so a bad argument still answers at once."""
    lm_options = [f for f, v in (("--csv", args.csv), ("--builtin", args.builtin)) if v is not None]
    if args.model is None:
        if lm_options:
            raise UsageError(f"{lm_options[0]} needs --model NAME (a knowledge base for a real LM's prompts)")
        if args.checkpoint is None:
            raise UsageError("give a CHECKPOINT directory, or --model NAME with --csv FILE or --builtin NAME")
        args.n_prompts = args.n_prompts or DEFAULT_N_PROMPTS
        return False
    if args.checkpoint is not None:
        raise UsageError("give a CHECKPOINT or --model, not both")
    if len(lm_options) != 1:
        raise UsageError("--model needs exactly one knowledge base: --csv FILE or --builtin NAME")
    if args.csv is not None and not args.csv.is_file():
        raise UsageError(f"--csv {args.csv} is not a file")
    for template, fields in ((args.pair_template, ("{s}", "{a}")), (args.query_template, ("{s}",))):
        missing = [f for f in fields if f not in template]
        if missing:
            raise UsageError(f"template {template!r} must name {' and '.join(fields)}")
    args.pair_template = args.pair_template.replace("\\n", "\n")  # a shell's literal \n means a newline
    args.query_template = args.query_template.replace("\\n", "\n")
    args.n_prompts = args.n_prompts or DEFAULT_LM_PROMPTS
    return True


def check_common(args, prefix: str, single: str | None = None) -> None:
    """Checks every probe makes before any work; sets ``args.kind``, ``args.out`` (checked writable) and
    ``args.existing`` (the names already in ``args.out``, so that what ``--force`` replaces can be listed).

    ``single``: the program name if it takes exactly one checkpoint (a series is refused).  A path the OS
    refuses (no permission, a name too long, a NUL byte) is a bad argument too: one line, exit 2.
    """
    on_model = check_model_arguments(args)  # before the heavy imports: a bad argument answers at once
    from icr_interp.experiments import checkpoint_analysis

    try:
        if on_model:
            args.kind = "model"
            check_device(args.device)
            args.out = checkpoint_analysis.output_dir(args.out, args.force, prefix, Path(args.model))
            args.existing = {p.name for p in args.out.iterdir()} if args.out.is_dir() else set()
            return
        args.kind = checkpoint_analysis.checkpoint_kind(args.checkpoint)
        if single and args.kind != "checkpoint":
            raise UsageError(f"{args.checkpoint} is a directory of checkpoints; {single} takes one checkpoint")
        check_device(args.device)
        args.out = checkpoint_analysis.output_dir(args.out, args.force, prefix, args.checkpoint)
        args.existing = {p.name for p in args.out.iterdir()} if args.out.is_dir() else set()
    except checkpoint_analysis.ProbeInputError as e:
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
