"""Activation patching of a checkpoint, by prompt role, its circuit summary, and an HTML report.

Usage::

    python probes/patching.py CHECKPOINT [--corruption relation|query|both] [--n-prompts N] [--seed S]
                              [--out DIR] [--force] [--method exact|attribution] [--eval-prompts M]
                              [--device cpu|cuda]
    python probes/patching.py --model NAME (--csv FILE | --builtin NAME) [--k K]
                              [--pair-template T] [--query-template T] [same options]

For one checkpoint: samples N prompts, corrupts them (relation swap and/or
query swap), patches clean into corrupted by hook x role and the query's
attention row by source role (icr_interp.analysis.causal.patching), prints the tables and the
circuit summary (icr_interp.analysis.causal.circuit), and writes DIR/patching.json,
DIR/patching.png (one heatmap per corruption), DIR/circuit.json and
DIR/report.html: a self-contained page (opens offline) with the model's
held-out accuracy on M fresh prompts, the circuitsvis attention view, the
template scores as a table, the patching heatmaps and the circuit summary.

With --model (a pretrained LM, e.g. smollm2-135m) the prompts are text built
from the knowledge base with the templates (default "{s}: {a}\\n" per pair and
"{s}:" for the query), tokenized by the model's own tokenizer.  It prints an estimated
time (calibrated on one forward), then a line per phase, saving each as it ends
(Ctrl-C keeps what is done): the default grid per corruption (residual stream x
role; attention and MLP output, and every head's z, at the prediction), the template
scores (scores.json), report.html and patching.png.  --grid full adds every head x
role and pattern x source role (attribution screens, exact patching confirms the
top cells) and the circuit summary (circuit.json).

For a directory of checkpoints (subdirectories holding config.json, ordered by
the "step" in their metrics, else by the number in their name): the circuit
summary of each, on the same prompts, written as DIR/patching_series.json,
DIR/patching_series.csv and DIR/patching_series.png (effect of each component
against the step).
"""

import _common as C

PROG = "patching.py"
KINDS = ("relation", "query", "both")  # icr_interp.experiments.checkpoint_analysis.KINDS


def build_parser() -> C.OneLineParser:
    p = C.OneLineParser(prog=PROG, **C.help_texts(__doc__))
    C.add_common_arguments(p, ", or a directory of checkpoints for a time series")
    p.add_argument("--corruption", choices=KINDS, default="both",
                   help="relation swap (moves relation inference), query swap (moves answer lookup), or both")
    p.add_argument("--method", choices=("exact", "attribution"), default="exact",
                   help="exact patching or attribution patching (first-order estimate); default exact")
    p.add_argument("--grid", choices=("default", "full"), default="default",
                   help="with --model: the default grid (residual stream x role, attention/MLP output and every "
                        "head's z at the prediction) or also every head x role and pattern, screened by attribution "
                        "and confirmed exactly, and the circuit summary (full)")
    p.add_argument("--eval-prompts", type=C.int_arg("--eval-prompts", 1), default=None, metavar="M",
                   help="held-out prompts for the report's accuracy (default 1024; 64 with --model)")
    return p


def check(args) -> None:
    C.check_common(args, "patching")
    args.eval_prompts = args.eval_prompts or (64 if args.kind == "model" else 1024)
    if args.kind == "series" and args.method != "exact":
        raise C.UsageError("--method attribution applies to one checkpoint; a directory of checkpoints gives "
                           "a series of exact circuit summaries")


def run(args) -> int:
    return dict(series=run_series, model=run_model).get(args.kind, run_one)(args)


def run_model(args) -> int:
    from icr_interp.experiments import checkpoint_analysis, model_probe, text_probe

    kb = text_probe.load_knowledge(args.csv, args.builtin)
    subject = text_probe.load_subject(args.model, kb, args.k, args.pair_template, args.query_template, args.device)
    batch, corruption_seed = text_probe.text_prompts(subject, args.n_prompts, args.seed, args.device)
    kinds = checkpoint_analysis.KINDS[args.corruption]
    info = dict(model=args.model, knowledge=str(args.csv or args.builtin), k=args.k, pair_template=args.pair_template,
                query_template=args.query_template, n_prompts=args.n_prompts, seed=args.seed,
                corruption_seed=corruption_seed, method=args.method, corruptions=list(kinds))
    done = model_probe.run_model_probe(subject, batch, kinds, corruption_seed, args.out,
                                       info, grid=args.grid, method=args.method, eval_prompts=args.eval_prompts,
                                       seed=args.seed, circuit=args.grid == "full")
    C.report_files(done["written"], args)
    return 0


def run_one(args) -> int:
    from icr_interp import load_checkpoint
    from icr_interp.experiments.checkpoint_analysis import (KINDS as CORRUPTIONS, json_safe, probe_prompts, run_seed,
                                                            role_patching, role_patching_dict, role_patching_png)
    from icr_interp.analysis.causal.circuit import JOB_OF, circuit_summary
    from icr_interp.storage.atomic import write_bytes, write_json, write_text
    from icr_interp.viz.model_report import checkpoint_report

    ck = load_checkpoint(args.checkpoint, device=args.device)
    batch, corruption_seed = probe_prompts(ck.task, args.n_prompts, args.seed, args.device)
    kinds = CORRUPTIONS[args.corruption]
    results = role_patching(ck.model, ck.task, batch, kinds, corruption_seed, args.method)
    summary = circuit_summary(ck.model, ck.task, batch, seed=corruption_seed, jobs=tuple(JOB_OF[k] for k in kinds),
                              checkpoint=str(args.checkpoint))
    for kind, res in results.items():
        print(f"== {kind} swap ({res['n_prompts']} prompts, {res['n_dropped']} without one dropped) ==\n"
              f"{res['by_role']}\n{res['pattern_by_role']}\n")
    print(summary)
    page = checkpoint_report(ck, batch, results, summary, eval_prompts=args.eval_prompts, seed=run_seed(ck),
                             title=f"IC-recall patching report: {args.checkpoint.resolve().name}")
    info = dict(checkpoint=str(args.checkpoint), n_prompts=args.n_prompts, seed=args.seed,
                corruption_seed=corruption_seed, method=args.method, corruptions=list(results))
    written = [
        write_json(args.out / "patching.json", json_safe(dict(**info, results=role_patching_dict(results)))),
        write_bytes(args.out / "patching.png", role_patching_png(results, args.n_prompts)),
        write_json(args.out / "circuit.json", json_safe(summary.to_dict())),
        write_text(args.out / "report.html", page),
    ]
    C.report_files(written, args)
    return 0


def run_series(args) -> int:
    from icr_interp.experiments.checkpoint_analysis import KINDS as CORRUPTIONS, circuit_series, find_checkpoints
    from icr_interp.analysis.causal.circuit import JOB_OF
    from icr_interp.storage.atomic import write_bytes, write_json, write_text
    from icr_interp.storage.jsonio import json_safe
    from icr_interp.seeds import derive_seed
    from icr_interp.viz import figures

    jobs = tuple(JOB_OF[k] for k in CORRUPTIONS[args.corruption])
    series = circuit_series(find_checkpoints(args.checkpoint), args.n_prompts, args.seed, args.device, log=print,
                            jobs=jobs)
    columns = (*jobs, "accuracy_drop")
    info = dict(directory=str(args.checkpoint), n_prompts=args.n_prompts, seed=args.seed,
                corruption_seed=derive_seed(args.seed, "corrupt"), corruption=args.corruption)
    fig = figures.plot_circuit_series(series, columns, n_prompts=args.n_prompts)
    written = [
        write_json(args.out / "patching_series.json", json_safe(dict(**info, **series.to_dict(columns)))),
        write_text(args.out / "patching_series.csv", series.to_csv(columns)),
        write_bytes(args.out / "patching_series.png", figures.figure_png(fig)),
    ]
    C.report_files(written, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.probe_main(build_parser(), check, run, argv)


if __name__ == "__main__":
    C.exit_process(main())
