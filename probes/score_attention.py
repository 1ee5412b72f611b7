"""Template scores of a checkpoint's attention: how pairwise is the query's row?

Usage::

    python probes/score_attention.py CHECKPOINT [--n-prompts N] [--seed S] [--out DIR] [--force]
                                     [--html] [--device cpu|cuda]
    python probes/score_attention.py --model NAME (--csv FILE | --builtin NAME) [--k K]
                                     [--pair-template T] [--query-template T] [same options]

Samples N prompts, scores every head's query attention row against the
templates (icr_interp.analysis.scoring.templates: pairwise, answers, subjects, uniform, sink;
per example and for the mean row), prints the table and writes
DIR/scores.json and DIR/attention.png (per head: the mean query row by role and
the rows of the first prompts).  With --html, also DIR/report.html: a
self-contained report (circuitsvis views, figures, scores table) that opens offline.
"""


import _common as C

PROG = "score_attention.py"


def build_parser() -> C.OneLineParser:
    p = C.OneLineParser(prog=PROG, **C.help_texts(__doc__))
    C.add_common_arguments(p, "")
    p.add_argument("--html", action="store_true", help="also write a self-contained HTML report (report.html)")
    return p


def check(args) -> None:
    C.check_common(args, "scores", single=PROG)


def run(args) -> int:
    from icr_interp import load_checkpoint, score_templates, viz
    from icr_interp.experiments import checkpoint_analysis, text_probe
    from icr_interp.storage.atomic import write_bytes, write_json

    if args.kind == "model":  # a pretrained LM on text prompts (--model, --csv/--builtin, templates)
        kb = text_probe.load_knowledge(args.csv, args.builtin)
        ck = text_probe.load_subject(args.model, kb, args.k, args.pair_template, args.query_template, args.device)
        batch, _ = text_probe.text_prompts(ck, args.n_prompts, args.seed, args.device, corruptions=())
        name, source = args.model, dict(model=args.model, knowledge=str(args.csv or args.builtin), k=args.k)
    else:
        ck = load_checkpoint(args.checkpoint, device=args.device)
        batch, _ = checkpoint_analysis.probe_prompts(ck.task, args.n_prompts, args.seed, args.device)
        name, source = args.checkpoint.resolve().name, dict(checkpoint=str(args.checkpoint))
    scores = score_templates(ck.model, batch)
    layers, note = text_probe.report_layers(scores) if args.kind == "model" else (None, "")
    print(text_probe.scores_summary(scores) + "\n" + note if args.kind == "model" else scores)
    data = dict(**source, n_prompts=args.n_prompts, seed=args.seed, **scores.to_dict())
    written = [write_json(args.out / "scores.json", checkpoint_analysis.json_safe(data)),
               write_bytes(args.out / "attention.png",
                           checkpoint_analysis.attention_png(ck.model, batch, layers, note))]
    if args.html:
        written.append(viz.save_report(args.out / "report.html", ck.model, batch, scores=scores, vocab=ck.task,
                                       layers=layers, title=f"IC-recall attention: {name}"))
    C.report_files(written, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.probe_main(build_parser(), check, run, argv)


if __name__ == "__main__":
    C.exit_process(main())
