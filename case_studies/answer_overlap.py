"""Case study 5 (beyond the paper): from disjoint to shared answers.

    python case_studies/answer_overlap.py --overlaps 0 0.25 0.5 0.75 1 --seeds 0 1 \
        --out case_studies/results/answer_overlap

The paper preset swept over answer overlap and seeds (one resumable sweep,
results.jsonl).  memory="constructed" picks the construction that fits
(answer neurons while every answer belongs to one relation, pair neurons when
every answer is shared, the mixed memory in between: docs/theory.md §2b);
reports which attention template fits best and where the pattern turns from
answers-only to pairwise.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, seed, write_json  # noqa: E402

from icr_interp.experiments import sweep  # noqa: E402
from icr_interp.viz.figures import new_figure  # noqa: E402

COLUMNS = ("answer_overlap", "seed", "construction", "start_accuracy", "accuracy", "ceiling", "pairwise",
           "pairwise_null", "balance", "pair_mass", "bos", "start_best", "best", "mean_row_pairwise", "mean_row_best")


def main(argv=None) -> int:
    p = Parser(prog="answer_overlap.py", description=__doc__.splitlines()[0])
    p.add_argument("--overlaps", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1])
    p.add_argument("--kb", type=positive, nargs=3, default=[64, 8, 64], metavar=("S", "R", "A"))
    p.add_argument("--n-samples", type=positive, default=2048)
    p.add_argument("--steps", type=positive, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="case_studies/results/answer_overlap")
    args = p.parse_args(argv)
    if any(not 0 <= o <= 1 for o in args.overlaps):
        p.error("overlaps must lie in [0, 1]")
    out = out_dir(p, args.out)
    configs = sweep.expand_grid("paper", kb_sizes=[tuple(args.kb)], answer_overlap=args.overlaps, seeds=args.seeds,
                                n_samples=args.n_samples, steps=args.steps, n_eval=512)
    results = sweep.run_sweep(configs, out / "results.jsonl", workers=args.workers)
    sweep.to_csv(results, out / "results.csv")
    rows = sorted(({k: r[k] for k in COLUMNS} for r in map(sweep.flat, results)),
                  key=lambda r: (r["answer_overlap"], r["seed"]))
    write_json(out / "summary.json", dict(args=vars(args), rows=rows))
    fig, axes = new_figure(8, 3.2, ncols=2)
    for s in args.seeds:
        sel = [r for r in rows if r["seed"] == s]
        axes[0, 0].plot([r["answer_overlap"] for r in sel], [r["balance"] for r in sel], "o-", label=f"seed {s}")
        line, = axes[0, 1].plot([r["answer_overlap"] for r in sel], [r["accuracy"] for r in sel], "o-")
        axes[0, 1].plot([r["answer_overlap"] for r in sel], [r["start_accuracy"] for r in sel], "o--",
                        color=line.get_color(), mfc="none", alpha=0.6)
    axes[0, 0].set(xlabel="answer overlap", ylabel="within-pair balance (1 = pairwise, 0 = one member)")
    axes[0, 1].set(xlabel="answer overlap", ylabel="accuracy (dashed: start)")
    axes[0, 0].legend()
    save_figure(fig, out / "answer_overlap.png")
    print(f"{'overlap':>7} {'seed':>4} {'memory':>7} {'start':>6} {'acc':>6} {'ceil':>6} {'pairw':>6} {'null':>6} "
          f"{'balance':>7} {'best (start)':>20} {'mean-row best':>13}")
    for r in rows:
        print(f"{r['answer_overlap']:7.2f} {r['seed']:4d} {r['construction']:>7} {r['start_accuracy']:6.3f} "
              f"{r['accuracy']:6.3f} {r['ceiling']:6.3f} {r['pairwise']:6.3f} {r['pairwise_null']:6.3f} "
              f"{r['balance']:7.3f} {r['best'] + ' (' + r['start_best'] + ')':>20} {r['mean_row_best']:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
