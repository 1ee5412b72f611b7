"""The ``icr-interp`` command line: train presets or your own facts, reproduce the paper's pattern, sweep.

Commands::

    icr-interp presets                            list the presets
    icr-interp train --preset NAME --out DIR      build, fine-tune, evaluate, save a checkpoint
    icr-interp train --csv FILE --k 3 --out DIR   the same on your own facts (subject,relation,answer rows)
    icr-interp train --builtin countries --out DIR   ... or on a knowledge base shipped with the package
    icr-interp reproduce [--out DIR]              the paper preset, with its query attention row explained
    icr-interp sweep [--preset NAME] --seeds ... --out FILE.jsonl
                                                  a resumable grid of runs, locally or on Ray

All of them run :func:`icr_interp.run`, so one config gives the same numbers from
each.  Arguments are parsed before anything heavy is imported (this module imports
only the standard library and :mod:`icr_interp.plumbing` at the top), so ``--help``
and argument errors answer at once.  Everything that can be checked is checked
before any work (preflight): the run configs (sizes bounded, seeds in 64 bits), the
output location (an ``--out`` directory must be free, empty, or a checkpoint of ours;
one with other files beside it needs ``--force``, which keeps them).  Bad arguments
print one line ``icr-interp: error: ...`` and exit with 2; a failure while running
prints one line and exits with 1; Ctrl-C, even during the imports, prints one line
and exits with 130 (:func:`icr_interp.plumbing.run_main`).  The logic lives in
importable functions; ``main`` only parses and dispatches.
"""

import argparse
import functools
import sys
import time
from pathlib import Path

from icr_interp.plumbing import SEED_LIMIT, OneLineParser, int_arg, one_line, run_main, seed_arg

PROG = "icr-interp"
# The presets, spelled here so that parsing needs no import of the library; a test pins both to
# icr_interp.pipeline.presets (PRESETS and presets_help()).
PRESET_NAMES = ("paper", "control", "pretrained", "tiny")
PRESETS_HELP = """\
presets:
  paper       reference: 64 subjects, 8 relations, 64 shared answers (bijective), k=4, constructed memory
              (fine-tune: n-samples 2048, steps 200, lr by attention (full 0.003 constant, positional 0.1 cosine))
  control     as paper but each relation has its own answers: one answer reveals the relation
              (fine-tune: n-samples 2048, steps 200, lr by attention (full 0.003 constant, positional 0.1 cosine))
  pretrained  as paper but the memory is pretrained on factual recall instead of constructed
              (fine-tune: n-samples 2048, steps 200, lr by attention (full 0.003 constant, positional 0.1 cosine))
  tiny        for tests: 16 subjects, 4 relations, 16 shared answers, k=2
              (fine-tune: n-samples 256, steps 50, lr 0.01)

your own facts: --csv FILE (or --builtin NAME) replaces the preset's knowledge base; --k, --layers, --heads,
--attention and --memory replace the preset's prompts and model (the preset gives the rest: paper by default)."""
MEMORIES = ("constructed", "pair", "answer", "mixed", "pretrained")  # icr_interp.model.builder.MEMORIES
ATTENTIONS = ("full", "positional")  # icr_interp.model.builder.ATTENTIONS


# ------------------------------------------------------------------ argument types
def _preset_name(text: str) -> str:
    if text not in PRESET_NAMES:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; choose one of: {', '.join(PRESET_NAMES)}")
    return text


def _csv_file(text: str) -> Path:
    path = Path(text)
    try:
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"{text}: {'is not a file' if path.exists() else 'no such file'}")
    except (OSError, ValueError) as e:  # a name too long, a NUL byte: the OS refuses the path
        raise argparse.ArgumentTypeError(f"{text!r}: {one_line(e)}") from None
    return path


def builtin_names() -> tuple[str, ...]:
    """The knowledge bases shipped with the package (read from its data folder; no import of the library)."""
    folder = Path(__file__).parent / "task" / "data"
    return tuple(sorted(p.stem for p in folder.glob("*.csv")))


def presets_help() -> str:
    """The presets, one per line, with their default fine-tuning budget (what :data:`PRESETS_HELP` spells)."""
    from icr_interp.model.attention_params import DEFAULT_LR, DEFAULT_SCHEDULE
    from icr_interp.pipeline.presets import DESCRIPTIONS, PRESETS

    lines = []
    for p in PRESETS.values():
        lr = f"{p.train.lr:g}" if p.train.lr is not None else "by attention (" + ", ".join(
            f"{a} {DEFAULT_LR[a]:g} {DEFAULT_SCHEDULE[a]}" for a in DEFAULT_LR) + ")"
        budget = f"n-samples {p.train.n_samples}, steps {p.train.steps}, lr {lr}"
        lines.append(f"  {p.name:<11} {DESCRIPTIONS[p.name]}\n  {'':<11} (fine-tune: {budget})")
    return "presets:\n" + "\n".join(lines) + PRESETS_HELP[PRESETS_HELP.index("\n\nyour own facts"):]


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``icr-interp`` parser with its four commands."""
    parser = OneLineParser(prog=PROG, description="In-context factual recall: train and inspect IC-recall models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=functools.partial(OneLineParser, error_prog=PROG))
    p = sub.add_parser("presets", help="list the presets", description="List the presets and what they build.")
    p.set_defaults(run=cmd_presets)

    p = sub.add_parser("train", help="fine-tune a preset or your own facts, save a checkpoint",
                       description="Build the knowledge base (a preset's, a CSV of facts, or a built-in one), the "
                                   "task and the model,\nfine-tune the attention, report held-out accuracy before "
                                   "and after, and save a checkpoint\nthat probes/*.py read.",
                       epilog=PRESETS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", type=_preset_name, default="paper", metavar="NAME",
                   help=f"one of: {', '.join(PRESET_NAMES)} (default paper; see below)")
    kb = p.add_mutually_exclusive_group()
    kb.add_argument("--csv", type=_csv_file, metavar="FILE",
                    help="your facts: a CSV with a header subject,relation,answer, one fact per row")
    kb.add_argument("--builtin", choices=builtin_names(), metavar="NAME",
                    help=f"a knowledge base shipped with the package: {', '.join(builtin_names())}")
    p.add_argument("--k", type=int_arg("--k", 1, 64), metavar="K", help="context pairs per prompt")
    p.add_argument("--layers", type=int_arg("--layers", 1, 2), metavar="L", help="layers (1 or 2)")
    p.add_argument("--heads", type=int_arg("--heads", 1, 64), metavar="H", help="attention heads per layer")
    p.add_argument("--attention", choices=ATTENTIONS, help="W_Q/W_K parametrisation (default: the preset's, full)")
    p.add_argument("--memory", choices=MEMORIES, help="the associative memory (default: the preset's)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="checkpoint directory to write")
    _add_run_options(p, hidden=False)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("reproduce", help="fine-tune the paper preset and show its attention pattern",
                       description="Fine-tune the reference ('paper') preset and print the query's attention row, "
                                   "labelled by role, and the within-pair balance of every context pair.")
    p.add_argument("--out", type=Path, metavar="DIR", help="checkpoint directory (default: runs/paper-seed{SEED})")
    _add_run_options(p, hidden=True)
    p.set_defaults(run=cmd_reproduce, preset="paper")
    _add_sweep_parser(sub)
    return parser


def _add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of fine-tuning runs (resumable; local processes or Ray)",
                       description="Run the grid of a preset (default: paper) over the axes below; an axis not "
                                   "given keeps the preset's value. Each finished run appends one JSON line to "
                                   "--out; running the same command again skips finished runs. A CSV is written "
                                   "next to it at the end.", epilog=PRESETS_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    pos = int_arg("value", 1)
    p.add_argument("--preset", type=_preset_name, default="paper", metavar="NAME",
                   help=f"the base run, one of: {', '.join(PRESET_NAMES)} (default paper)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.jsonl", help="results file (appended to)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--n-triplets", type=pos, nargs="+", metavar="N", help="knowledge-base sizes in facts")
    size.add_argument("--kb", type=pos, nargs=3, action="append", metavar=("S", "R", "A"),
                      help="a knowledge-base size (repeatable)")
    p.add_argument("--n-relations", type=pos, default=8, help="relations with --n-triplets (default 8)")
    p.add_argument("--k", type=pos, nargs="+", help="context pairs")
    p.add_argument("--seeds", type=int_arg("seed", 0, SEED_LIMIT - 1), nargs="+", default=[0], help="run seeds (default 0)")
    p.add_argument("--n-samples", type=pos, nargs="+", help="training-set sizes")
    p.add_argument("--memory", nargs="+", choices=("constructed", "pair", "answer", "pretrained"))
    p.add_argument("--overlap", type=float, nargs="+", help="answer overlaps in [0, 1]")
    p.add_argument("--steps", type=int_arg("--steps", 0), nargs="+", help="fine-tuning steps")
    p.add_argument("--workers", type=int_arg("--workers", 0), default=None,
                   help="parallel runs (default: min(2, cores)); 0 = in this process")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address (implies --executor ray)")
    p.add_argument("--no-wait", action="store_true",
                   help="exit at once if another sweep is writing --out (default: wait for it)")
    p.set_defaults(run=cmd_sweep)


def sweep_grid(args: argparse.Namespace) -> list:
    """The RunConfigs of ``icr-interp sweep``'s arguments (ValueError, one line, for a bad value)."""
    from icr_interp.experiments.sweep import expand_grid

    axes = dict(n_pairs=args.k, seeds=args.seeds, n_samples=args.n_samples, memory=args.memory,
                answer_overlap=args.overlap, steps=args.steps)
    axes = {name: values for name, values in axes.items() if values is not None}
    sizes = dict(n_triplets=args.n_triplets, n_relations=args.n_relations) if args.n_triplets else \
        dict(kb_sizes=[tuple(kb) for kb in args.kb]) if args.kb else {}
    return expand_grid(args.preset, **sizes, **axes)


def _add_run_options(p: argparse.ArgumentParser, hidden: bool) -> None:
    """--seed, --device and the fine-tuning budget (hidden for ``reproduce``, whose budget is the preset's)."""
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seeds the knowledge base, the model and the training set (default 0)")
    p.add_argument("--n-samples", type=int_arg("--n-samples", 1), metavar="N",
                   help=argparse.SUPPRESS if hidden else "training-set size (default: the preset's)")
    p.add_argument("--steps", type=int_arg("--steps", 0), metavar="N",
                   help=argparse.SUPPRESS if hidden else "optimiser steps (default: the preset's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--force", action="store_true",
                   help="replace the checkpoint at --out even if other files sit beside it (they are kept)")


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Preflight, before any work: the run config, the output location, the device; exit 2 on failure."""
    if args.command == "presets":
        return
    if getattr(args, "device", "cpu") == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda requested but CUDA is not available")
    try:
        if args.command == "sweep":
            args.configs = sweep_grid(args)  # every run's config is validated (sizes bounded) now
            _check_results_file(args.out)
            return
        args.config = run_config(args)
        if args.config.knowledge.csv:
            args.config.knowledge.build(args.config.seed)  # a CSV that does not load is a bad argument
    except (ValueError, OSError) as e:
        parser.error(f"--csv {getattr(args, 'csv', '')}: {one_line(e)}" if isinstance(e, OSError) else str(e))
    if args.command == "reproduce" and args.out is None:
        args.out = Path("runs") / f"paper-seed{args.seed}"
    from icr_interp.storage.checkpoint import CheckpointError, check_writable

    try:
        check_writable(args.out, force=args.force)
    except (CheckpointError, OSError, ValueError) as e:  # ValueError: a path with a NUL byte
        parser.error(f"--out: {one_line(e)}")


def _check_results_file(out: Path) -> None:
    """Preflight of a sweep's outputs: the results file and its CSV summary (ValueError, one line, otherwise).

    The results file must be an appendable file of records or creatable; the summary
    (``sweep.summary_path``) must be free or a summary a sweep wrote; both are checked before any run.
    """
    from icr_interp.experiments.sweep.store import check_summary, load_results, summary_path
    from icr_interp.storage import preflight

    preflight.output_file(out, "--out")
    try:
        if out.exists():
            with open(out, "ab"):  # the results file is appended to: it must open for appending
                pass
            load_results(out)  # a damaged file is reported now, not after the runs
    except OSError as e:
        raise ValueError(f"--out {out}: {one_line(e.strerror or e)}") from None
    check_summary(preflight.output_file(summary_path(out), "the summary CSV"))


# ------------------------------------------------------------------ commands
def cmd_presets(args: argparse.Namespace) -> int:
    from icr_interp.pipeline.presets import DESCRIPTIONS, PRESETS

    for p in PRESETS.values():
        print(f"{p.name:<11} {DESCRIPTIONS[p.name]}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    config = args.config
    print(config.summary())
    train_and_save(config, args.out, args.device, force=args.force)
    print(f"checkpoint: {args.out}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from icr_interp.viz.query_table import attention_report

    print("Reproducing the pairwise attention pattern of in-context factual recall (arXiv 2605.27774).")
    config = args.config
    print(config.summary())
    result = train_and_save(config, args.out, args.device, force=args.force)
    print()
    print(attention_report(result.task, result.before["query_attention"], result.after["query_attention"],
                           result.before["n_prompts"]))
    print(f"\ncheckpoint: {args.out}")
    return 0


def run_config(args: argparse.Namespace):
    """The :class:`~icr_interp.pipeline.config.RunConfig` of the command line: the preset with its overrides.

    ``--csv`` / ``--builtin`` replace the preset's knowledge base (the run is then named after it); ``--k``,
    ``--layers``, ``--heads``, ``--attention``, ``--memory``, ``--n-samples`` and ``--steps`` replace single
    fields.  A ValueError (one line) names a value the config refuses.
    """
    from icr_interp.pipeline.config import RunConfig

    given = {"train.n_samples": args.n_samples, "train.steps": args.steps,
             "task.n_pairs": getattr(args, "k", None), "model.n_layers": getattr(args, "layers", None),
             "model.n_heads": getattr(args, "heads", None), "model.attention": getattr(args, "attention", None),
             "model.memory": getattr(args, "memory", None)}
    overrides = {key: value for key, value in given.items() if value is not None}
    csv, builtin = getattr(args, "csv", None), getattr(args, "builtin", None)
    if csv is not None:
        overrides["knowledge.csv"] = str(csv)
    elif builtin is not None:
        overrides["knowledge.builtin"] = builtin
    config = RunConfig.from_preset(args.preset, seed=args.seed, **overrides)
    return config.with_overrides(name=csv.stem if csv is not None else builtin) if csv or builtin else config


def cmd_sweep(args: argparse.Namespace) -> int:
    from icr_interp.experiments import sweep  # sweeps pull in multiprocessing / Ray only when used

    configs = args.configs
    executor = "ray" if args.ray_address else args.executor
    print(f"{len(configs)} runs of {args.preset} -> {args.out} ({executor})")
    csv_path = sweep.summary_path(args.out)  # never the results file itself; written under its lock
    results = sweep.run_sweep(configs, args.out, executor=executor, workers=args.workers,
                              ray_address=args.ray_address, wait=not args.no_wait, summary=csv_path)
    print(f"{'key':<16} {'seed':>6} {'facts':>6} {'k':>2} {'n':>6} {'steps':>5} {'acc':>6} {'pairwise':>8} {'best':>9}")
    for r in map(sweep.flat, results):
        print(f"{r['key']:<16} {r.get('seed', '-'):>6} {r.get('n_triplets', '-'):>6} {r.get('n_pairs', '-'):>2} "
              f"{r.get('n_samples', '-'):>6} {r.get('steps', '-'):>5} {r['accuracy']:6.3f} "
              f"{r.get('pairwise', float('nan')):8.3f} {r.get('best', '-'):>9}")
    print(f"csv: {csv_path}")
    return 0


def train_and_save(config, out: Path, device: str = "cpu", force: bool = False):
    """Run ``config`` (:func:`icr_interp.run`), print what it measured, save the checkpoint at ``out``."""
    from icr_interp.pipeline import runner
    from icr_interp.storage.checkpoint import save_checkpoint

    t0 = time.perf_counter()
    print(f"building {config.name} (seed {config.seed}), then measuring, fine-tuning, measuring again", flush=True)
    result = runner.run(config, device, progress=True, log=print,  # the bar shows only on a terminal ...
                        callback=progress_lines(config.train.steps, t0))  # ... elsewhere, a line every few seconds
    before, after, train = result.before, result.after, result.model.icr_train  # lr resolved
    print(f"fine-tuned on {train.n_samples} prompts for {train.steps} steps (lr {train.lr:g})")
    print(f"held-out accuracy ({after['n_prompts']} prompts): before {before['accuracy']:.3f}, "
          f"after {after['accuracy']:.3f}  (loss {before['loss']:.3f} -> {after['loss']:.3f})")
    for name, side in (("before", before), ("after", after)):
        r = side.get("templates")
        if r:
            print(f"attention template {name:>6}: best {r['best']:<9} pairwise score {r['pairwise']:.3f} per "
                  f"example (null {r['pairwise_null']:.3f}, p {r['p_value']:.3g}), {r['mean_row_pairwise']:.3f} "
                  f"mean row (null {r['mean_row_pairwise_null']:.3f}, best {r['mean_row_best']}); "
                  f"balance {r['balance']:.3f}")
    if before.get("templates") or after.get("templates"):
        from icr_interp.analysis.scoring.pairing_evidence import rule_text

        print(f"  (best: the nearest template in total variation; {rule_text()})")
    save_checkpoint(out, result.model, result.task, run_config=config, force=force, preset=config.name,
                    seed=config.seed, before=before, after=after,
                    history=result.history.to_dict())
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return result


def progress_lines(steps: int, t0: float, every_s: float = 5.0, stream=None):
    """A fine-tuning callback printing ``fine-tune: step i/N, loss x (t s)`` at most every ``every_s`` seconds
    (and at the last step), where stdout is not a terminal; on a terminal tqdm's bar shows instead (None)."""
    stream = stream or sys.stdout
    if stream.isatty():
        return None
    last = [time.perf_counter()]

    def callback(step: int, model, history) -> None:
        now = time.perf_counter()
        if now - last[0] >= every_s or step + 1 == steps:
            last[0] = now
            print(f"fine-tune: step {step + 1}/{steps}, loss {history.loss[-1]:.4f} ({now - t0:.0f} s)",
                  file=stream, flush=True)

    return callback


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``icr-interp``; returns the exit code (0, 1 failure, 2 bad argument, 130 Ctrl-C)."""

    def body() -> int:
        parser = build_parser()
        args = parser.parse_args(argv)  # --help and argparse's errors end here, before any heavy import
        _check_args(parser, args)
        return args.run(args)

    return run_main(PROG, body, failures=(ValueError, OSError, ImportError, RuntimeError, MemoryError, KeyError))


if __name__ == "__main__":
    from icr_interp.plumbing import exit_process

    exit_process(main())
