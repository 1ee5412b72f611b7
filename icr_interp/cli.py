"""The ``icr-interp`` command line: train presets, reproduce the paper's pattern.

Commands::

    icr-interp presets                            list the presets
    icr-interp train --preset NAME --out DIR      build, fine-tune, evaluate, save a checkpoint
    icr-interp reproduce [--out DIR]              the paper preset, with its query attention row explained
    icr-interp sweep [--preset NAME] --seeds ... --out FILE.jsonl
                                                  a resumable grid of runs, locally or on Ray

All three run :func:`icr_interp.run`, so one config gives the same numbers from
each.  Everything that can be checked is checked before any work (preflight):
the run configs (sizes bounded, seeds in 64 bits), the output location (an
``--out`` directory must be free, empty, or a checkpoint of ours; one with
other files beside it needs ``--force``, which keeps them).  Bad arguments
print one line ``icr-interp: error: ...`` and exit with 2; a failure while
running prints one line and exits with 1.  The logic lives in importable
functions; ``main`` only parses and dispatches.
"""

import argparse
import sys
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.storage import fsio
from icr_interp.model.attention_params import DEFAULT_LR, DEFAULT_SCHEDULE
from icr_interp.storage.checkpoint import CheckpointError, check_writable, save_checkpoint
from icr_interp.pipeline.config import RunConfig
from icr_interp.pipeline.runner import RunResult, run
from icr_interp.pipeline.presets import DESCRIPTIONS, PRESETS, get_preset
from icr_interp.seeds import MAX_SEED
from icr_interp.task.prompts import ICRecallTask, Layout

PROG = "icr-interp"


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{PROG}: error: {_one_line(message)}\n")


# ------------------------------------------------------------------ argument types
def _preset_name(text: str) -> str:
    try:
        return get_preset(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _int_in(low: int, high: int | None, what: str):
    """An argparse type accepting integers in [low, high)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if value < low or (high is not None and value >= high):
            bound = f">= {low}" if high is None else f"in [{low}, {high})"
            raise argparse.ArgumentTypeError(f"{what} must be {bound}, got {value}")
        return value

    return parse


def _presets_help() -> str:
    """The presets, one per line, with their default fine-tuning budget."""
    lines = []
    for p in PRESETS.values():
        lr = f"{p.train.lr:g}" if p.train.lr is not None else "by attention (" + ", ".join(
            f"{a} {DEFAULT_LR[a]:g} {DEFAULT_SCHEDULE[a]}" for a in DEFAULT_LR) + ")"
        budget = f"n-samples {p.train.n_samples}, steps {p.train.steps}, lr {lr}"
        lines.append(f"  {p.name:<11} {DESCRIPTIONS[p.name]}\n  {'':<11} (fine-tune: {budget})")
    return "presets:\n" + "\n".join(lines)


# ------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``icr-interp`` parser with its three commands."""
    parser = _Parser(prog=PROG, description="In-context factual recall: train and inspect IC-recall models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("presets", help="list the presets", description="List the presets and what they build.")
    p.set_defaults(run=cmd_presets)

    p = sub.add_parser("train", help="build a preset, fine-tune it, save a checkpoint",
                       description="Build the preset's knowledge base, task and model, fine-tune the attention,\n"
                                   "report held-out accuracy before and after, and save a checkpoint.",
                       epilog=_presets_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", required=True, type=_preset_name, metavar="NAME",
                   help=f"one of: {', '.join(PRESETS)} (see below)")
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
                                   "next to it at the end.", epilog=_presets_help(),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    pos = _int_in(1, None, "value")
    p.add_argument("--preset", type=_preset_name, default="paper", metavar="NAME",
                   help=f"the base run, one of: {', '.join(PRESETS)} (default paper)")
    p.add_argument("--out", required=True, type=Path, metavar="FILE.jsonl", help="results file (appended to)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--n-triplets", type=pos, nargs="+", metavar="N", help="knowledge-base sizes in facts")
    size.add_argument("--kb", type=pos, nargs=3, action="append", metavar=("S", "R", "A"),
                      help="a knowledge-base size (repeatable)")
    p.add_argument("--n-relations", type=pos, default=8, help="relations with --n-triplets (default 8)")
    p.add_argument("--k", type=pos, nargs="+", help="context pairs")
    p.add_argument("--seeds", type=_int_in(0, MAX_SEED, "seed"), nargs="+", default=[0], help="run seeds (default 0)")
    p.add_argument("--n-samples", type=pos, nargs="+", help="training-set sizes")
    p.add_argument("--memory", nargs="+", choices=("constructed", "pair", "answer", "pretrained"))
    p.add_argument("--overlap", type=float, nargs="+", help="answer overlaps in [0, 1]")
    p.add_argument("--steps", type=_int_in(0, None, "--steps"), nargs="+", help="fine-tuning steps")
    p.add_argument("--workers", type=_int_in(0, None, "--workers"), default=None,
                   help="parallel runs (default: min(2, cores)); 0 = in this process")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--ray-address", metavar="ADDR", help="Ray cluster address (implies --executor ray)")
    p.add_argument("--no-wait", action="store_true",
                   help="exit at once if another sweep is writing --out (default: wait for it)")
    p.set_defaults(run=cmd_sweep)


def sweep_grid(args: argparse.Namespace) -> list[RunConfig]:
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
    p.add_argument("--seed", type=_int_in(0, MAX_SEED, "seed"), default=0,
                   help="seeds the knowledge base, the model and the training set (default 0)")
    p.add_argument("--n-samples", type=_int_in(1, None, "--n-samples"), metavar="N",
                   help=argparse.SUPPRESS if hidden else "training-set size (default: the preset's)")
    p.add_argument("--steps", type=_int_in(0, None, "--steps"), metavar="N",
                   help=argparse.SUPPRESS if hidden else "optimiser steps (default: the preset's)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default cpu)")
    p.add_argument("--force", action="store_true",
                   help="replace the checkpoint at --out even if other files sit beside it (they are kept)")


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Preflight, before any work: the run config, the output location, the device; exit 2 on failure."""
    if getattr(args, "device", "cpu") == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")
    if args.command == "presets":
        return
    try:
        if args.command == "sweep":
            args.configs = sweep_grid(args)  # every run's config is validated (sizes bounded) now
            _check_results_file(args.out)
            return
        args.config = run_config(args)
    except ValueError as e:
        parser.error(str(e))
    if args.command == "reproduce" and args.out is None:
        args.out = Path("runs") / f"paper-seed{args.seed}"
    try:
        check_writable(args.out, force=args.force)
    except CheckpointError as e:
        parser.error(f"--out: {e}")


def _check_results_file(out: Path) -> None:
    """A results file that exists and is a file, or can be created: ValueError otherwise."""
    if out.exists() and not out.is_file():
        raise ValueError(f"--out {out} exists and is not a file")
    ancestor = next((p for p in out.absolute().parents if p.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise ValueError(f"--out {out}: {ancestor} is not a directory")
    try:
        if out.exists():
            with open(out, "ab"):  # the results file is appended to: it must open for appending
                pass
        fsio.check_creatable(out)  # the CSV and the lock are created beside it
    except OSError as e:
        raise ValueError(f"--out {out}: {_one_line(e)}") from None


# ------------------------------------------------------------------ commands
def cmd_presets(args: argparse.Namespace) -> int:
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
    print("Reproducing the pairwise attention pattern of in-context factual recall (arXiv 2605.27774).")
    config = args.config
    print(config.summary())
    result = train_and_save(config, args.out, args.device, force=args.force)
    print()
    print(attention_report(result.task, result.before["query_attention"], result.after["query_attention"],
                           result.before["n_prompts"]))
    print(f"\ncheckpoint: {args.out}")
    return 0


def run_config(args: argparse.Namespace) -> RunConfig:
    """The preset's RunConfig with the command line's seed and budget."""
    overrides = {f"train.{k}": v for k, v in dict(n_samples=args.n_samples, steps=args.steps).items() if v is not None}
    return RunConfig.from_preset(args.preset, seed=args.seed, **overrides)


def cmd_sweep(args: argparse.Namespace) -> int:
    from icr_interp import sweep  # sweeps pull in multiprocessing / Ray only when used

    configs = args.configs
    executor = "ray" if args.ray_address else args.executor
    print(f"{len(configs)} runs of {args.preset} -> {args.out} ({executor})")
    results = sweep.run_sweep(configs, args.out, executor=executor, workers=args.workers,
                              ray_address=args.ray_address, wait=not args.no_wait)
    csv_path = sweep.to_csv(results, args.out.with_suffix(".csv"))
    print(f"{'key':<16} {'seed':>6} {'facts':>6} {'k':>2} {'n':>6} {'steps':>5} {'acc':>6} {'pairwise':>8} {'best':>9}")
    for r in map(sweep.flat, results):
        print(f"{r['key']:<16} {r.get('seed', '-'):>6} {r.get('n_triplets', '-'):>6} {r.get('n_pairs', '-'):>2} "
              f"{r.get('n_samples', '-'):>6} {r.get('steps', '-'):>5} {r['accuracy']:6.3f} "
              f"{r.get('pairwise', float('nan')):8.3f} {r.get('best', '-'):>9}")
    print(f"csv: {csv_path}")
    return 0


def train_and_save(config: RunConfig, out: Path, device: str = "cpu", force: bool = False) -> RunResult:
    """Run ``config`` (:func:`icr_interp.run`), print what it measured, save the checkpoint at ``out``."""
    result = run(config, device, progress=True, log=print)  # the bar shows only on a terminal
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
    save_checkpoint(out, result.model, result.task, run_config=config, force=force, preset=config.name,
                    seed=config.seed, before=before, after=after,
                    history=result.history.to_dict())
    return result


# ------------------------------------------------------------------ report
def position_labels(task: ICRecallTask) -> list[str]:
    """Role label of every prompt position: BOS, s1, a1, ..., sk, ak, query."""
    lay = task.layout(1)
    labels = ["other"] * task.n_ctx
    if int(lay.bos_pos[0]) >= 0:
        labels[int(lay.bos_pos[0])] = "BOS"
    for i, (s, a) in enumerate(zip(lay.subject_pos[0].tolist(), lay.answer_pos[0].tolist()), start=1):
        labels[s], labels[a] = f"s{i}", f"a{i}"
    labels[int(lay.query_pos[0])] = "query"
    return labels


def pair_balance(row: Float[Tensor, " pos"], layout: Layout) -> Float[Tensor, " pair"]:
    """Within-pair balance 2 min(s, a) / (s + a) of a query attention row (1 = equal split; nan if unattended).

    ``layout`` is a one-example layout (``task.layout(1)``).
    """
    s, a = row[layout.subject_pos[0]], row[layout.answer_pos[0]]
    return 2 * torch.minimum(s, a) / (s + a)


def attention_report(task: ICRecallTask, before: list[float], after: list[float], n_prompts: int) -> str:
    """Tables of the mean query attention row by role, and of each pair's mass and balance, before/after."""
    rows = torch.tensor([before, after])  # [2 pos]
    lines = [f"query attention row, mean over {n_prompts} held-out prompts:",
             f"  {'pos':>3}  {'role':<6} {'before':>7} {'after':>7}"]
    for pos, label in enumerate(position_labels(task)):
        lines.append(f"  {pos:>3}  {label:<6} {rows[0, pos]:7.3f} {rows[1, pos]:7.3f}")
    layout = task.layout(1)
    s, a = rows[:, layout.subject_pos[0]], rows[:, layout.answer_pos[0]]  # [2 pair]
    mass, bal = s + a, torch.stack([pair_balance(r, layout) for r in rows])
    # Over all pairs: balance weighted by mass, i.e. the share of context attention that is paired.
    overall = 2 * torch.minimum(s, a).sum(1) / mass.sum(1)
    lines += ["", "context pairs: mass s+a and within-pair balance 2*min(s,a)/(s+a)",
              "(balance 1 = subject and answer attended equally; a pair with little mass has a noisy balance):",
              f"  {'':<5} {'-------- before':>16}   {'--------- after':>16}",
              f"  {'pair':<5} {'mass':>7} {'balance':>8}   {'mass':>7} {'balance':>8}"]
    for i in range(task.n_pairs):
        lines.append(f"  {i + 1:<5} {mass[0, i]:7.3f} {bal[0, i]:8.3f}   {mass[1, i]:7.3f} {bal[1, i]:8.3f}")
    lines.append(f"  {'all':<5} {mass[0].sum():7.3f} {overall[0]:8.3f}   {mass[1].sum():7.3f} {overall[1]:8.3f}")
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``icr-interp``; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check_args(parser, args)
    except SystemExit as e:  # argparse: --help (0) or a bad argument (2)
        return e.code if isinstance(e.code, int) else int(e.code is not None)
    try:
        return args.run(args)
    except (CheckpointError, ValueError, OSError, ImportError, RuntimeError, MemoryError) as e:
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def _one_line(message) -> str:
    return " ".join(str(message).split())


if __name__ == "__main__":
    sys.exit(main())
