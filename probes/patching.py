"""Activation patching of a checkpoint, by prompt role, and its circuit summary.

Usage::

    python probes/patching.py CHECKPOINT [--corruption relation|query|both] [--n-prompts N] [--seed S]
                              [--out DIR] [--force] [--method exact|attribution] [--device cpu|cuda]

For one checkpoint: samples N prompts, corrupts them (relation swap and/or
query swap), patches clean into corrupted by hook x role and the query's
attention row by source role (icr_interp.patching), prints the tables and the
circuit summary (icr_interp.circuit), and writes DIR/patching.json,
DIR/patching.png (one heatmap per corruption) and DIR/circuit.json.

For a directory of checkpoints (subdirectories holding config.json, ordered by
the "step" in their metrics, else by the number in their name): the circuit
summary of each, on the same prompts, written as DIR/patching_series.json,
DIR/patching_series.csv and DIR/patching_series.png (effect of each component
against the step).
"""

import sys

import _common as C

PROG = "patching.py"


def build_parser() -> C.ProbeParser:
    p = C.ProbeParser(prog=PROG, **C.help_texts(__doc__))
    C.add_common_arguments(p, ", or a directory of checkpoints for a time series")
    p.add_argument("--corruption", choices=tuple(C.KINDS), default="both",
                   help="relation swap (moves relation inference), query swap (moves answer lookup), or both")
    p.add_argument("--method", choices=("exact", "attribution"), default="exact",
                   help="exact patching or attribution patching (first-order estimate); default exact")
    return p


def check(args) -> None:
    args.kind = C.checkpoint_kind(args.checkpoint)
    if args.kind == "series" and args.method != "exact":
        raise C.UsageError("--method attribution applies to one checkpoint; a directory of checkpoints gives "
                           "a series of exact circuit summaries")
    C.check_device(args.device)
    args.out = C.output_dir(args.out, args.force, "patching", args.checkpoint)


def run(args) -> int:
    return (run_series if args.kind == "series" else run_one)(args)


def run_one(args) -> int:
    from icr_interp.circuit import circuit_summary

    ck = C.load(args.checkpoint, args.device)
    batch = ck.task.sample(args.n_prompts, seed=args.seed, device=args.device)
    results = C.role_patching(ck.model, ck.task, batch, C.KINDS[args.corruption], args.seed + 1, args.method)
    summary = circuit_summary(ck.model, ck.task, batch, seed=args.seed + 1, checkpoint=str(args.checkpoint))
    for kind, res in results.items():
        print(f"== {kind} swap ==\n{res['by_role']}\n{res['pattern_by_role']}\n")
    print(summary)
    info = dict(checkpoint=str(args.checkpoint), n_prompts=args.n_prompts, seed=args.seed,
                corruption_seed=args.seed + 1, method=args.method, corruptions=list(results))
    written = [
        C.write_json(args.out / "patching.json",
                     dict(**info, results={k: {name: r.to_dict() for name, r in res.items()}
                                           for k, res in results.items()})),
        C.write_bytes(args.out / "patching.png", C.patching_png(results)),
        C.write_json(args.out / "circuit.json", summary.to_dict()),
    ]
    C.report_files(written)
    return 0


def run_series(args) -> int:
    from icr_interp import viz
    from icr_interp.circuit import CircuitSeries, circuit_summary

    entries = C.find_checkpoints(args.checkpoint)
    summaries = []
    for entry in entries:
        ck = C.load(entry.path, args.device)
        batch = ck.task.sample(args.n_prompts, seed=args.seed, device=args.device)
        summaries.append(circuit_summary(ck.model, ck.task, batch, seed=args.seed + 1, checkpoint=entry.name,
                                         step=entry.step))
        print(f"{entry.name} (step {entry.step}): {summaries[-1].verdict}")
    series = CircuitSeries([e.name for e in entries], [e.step for e in entries], summaries)
    columns = (*({"relation": "relation", "query": "lookup"}[k] for k in C.KINDS[args.corruption]), "accuracy_drop")
    info = dict(directory=str(args.checkpoint), n_prompts=args.n_prompts, seed=args.seed,
                corruption_seed=args.seed + 1, corruption=args.corruption)
    written = [
        C.write_json(args.out / "patching_series.json", dict(**info, **series.to_dict(columns))),
        C.write_text(args.out / "patching_series.csv", series.to_csv(columns)),
        C.write_bytes(args.out / "patching_series.png", viz.figure_png(C.plot_series(series, columns))),
    ]
    C.report_files(written)
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.run_main(build_parser(), check, run, argv)


if __name__ == "__main__":
    sys.exit(main())
