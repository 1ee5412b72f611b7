"""Template scores of a checkpoint's attention: how pairwise is the query's row?

Usage::

    python probes/score_attention.py CHECKPOINT [--n-prompts N] [--seed S] [--out DIR] [--force]
                                     [--html] [--device cpu|cuda]

Samples N prompts, scores every head's query attention row against the
templates (icr_interp.templates: pairwise, answers, subjects, uniform, sink;
per example and for the mean row), prints the table and writes
DIR/scores.json and DIR/attention.png (per head: the mean query row by role and
the rows of the first prompts).  With --html, also DIR/report.html: a
self-contained report (circuitsvis views, figures, scores) that opens offline.
"""

import sys

import _common as C

PROG = "score_attention.py"
MAX_ROWS_SHOWN = 32  # prompts in the per-example heatmap


def build_parser() -> C.ProbeParser:
    p = C.ProbeParser(prog=PROG, **C.help_texts(__doc__))
    C.add_common_arguments(p, "")
    p.add_argument("--html", action="store_true", help="also write a self-contained HTML report (report.html)")
    return p


def check(args) -> None:
    C.check_single_checkpoint(args, PROG, "scores")


def attention_png(model, batch) -> bytes:
    """Per layer and head: the mean query row (bars by role) and the first prompts' rows (heatmap)."""
    from icr_interp import viz

    pngs = []
    for layer in range(model.cfg.n_layers):
        rows, labels = viz.query_attention(model, batch, layer)  # [batch head slot]
        for head in range(rows.shape[1]):
            name = f"L{layer}H{head}"
            pngs.append(viz.figure_png(viz.plot_query_attention(rows[:, head].mean(0), labels,
                                                                f"{name}: mean query row ({len(batch)} prompts)")))
            pngs.append(viz.figure_png(viz.plot_query_attention(rows[:MAX_ROWS_SHOWN, head], labels,
                                                                f"{name}: query rows")))
    return C.stack_pngs(pngs)


def run(args) -> int:
    from icr_interp import score_templates, viz

    ck = C.load(args.checkpoint, args.device)
    batch = ck.task.sample(args.n_prompts, seed=args.seed, device=args.device)
    scores = score_templates(ck.model, batch)
    print(scores)
    data = dict(checkpoint=str(args.checkpoint), n_prompts=args.n_prompts, seed=args.seed, **scores.to_dict())
    written = [C.write_json(args.out / "scores.json", data),
               C.write_bytes(args.out / "attention.png", attention_png(ck.model, batch))]
    if args.html:
        written.append(viz.save_report(args.out / "report.html", ck.model, batch, scores=scores, vocab=ck.task,
                                       title=f"IC-recall attention: {args.checkpoint.resolve().name}"))
    C.report_files(written)
    return 0


def main(argv: list[str] | None = None) -> int:
    return C.run_main(build_parser(), check, run, argv)


if __name__ == "__main__":
    sys.exit(main())
