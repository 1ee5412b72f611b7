"""Case study 3: more context pairs, k = 1..8.

    python case_studies/context_pairs.py --ks 1 2 3 4 5 6 7 8 --grid 16 64 256 1024 \
        --out case_studies/results/context_pairs

The paper preset (64 subjects, 8 relations, 64 shared answers) swept over k.  For
every k: held-out accuracy and template scores at the largest training set,
and n* (fewest samples reaching --target accuracy) on --grid.  Resumable
(results.jsonl).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, seed, write_json  # noqa: E402

from icr_interp.experiments import sweep  # noqa: E402
from icr_interp.experiments.fits import sample_complexity  # noqa: E402
from icr_interp.viz.figures import new_figure  # noqa: E402


def summarise(results: list[dict], target: float) -> list[dict]:
    """Per k: accuracy and template scores at the largest training set, and n* per seed."""
    results = [sweep.flat(r) for r in results]
    rows = []
    for k in sorted({r["n_pairs"] for r in results}):
        runs = [r for r in results if r["n_pairs"] == k]
        top = max(runs, key=lambda r: (r["n_samples"], r["seed"]))
        n_star = sample_complexity([dict(r, n_triplets=k) for r in runs], target, "accuracy")
        rows.append(dict(k=k, accuracy=top["accuracy"], pairwise=top["pairwise"],
                         mean_row_pairwise=top["mean_row_pairwise"], balance=top["balance"], best=top["best"],
                         mean_row_best=top["mean_row_best"], n_star=[r["n_star"] for r in n_star]))
    return rows


def main(argv=None) -> int:
    p = Parser(prog="context_pairs.py", description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=positive, nargs="+", default=list(range(1, 9)))
    p.add_argument("--grid", type=positive, nargs="+", default=[16, 64, 256, 1024])
    p.add_argument("--seeds", type=seed, nargs="+", default=[0])
    p.add_argument("--kb", type=positive, nargs=3, default=[64, 8, 64], metavar=("S", "R", "A"))
    p.add_argument("--steps", type=positive, default=200)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", default="case_studies/results/context_pairs")
    args = p.parse_args(argv)
    out = out_dir(p, args.out)
    configs = sweep.expand_grid("paper", kb_sizes=[tuple(args.kb)], n_pairs=args.ks, seeds=args.seeds,
                                n_samples=args.grid, steps=args.steps, n_eval=512)
    results = sweep.run_sweep(configs, out / "results.jsonl", workers=args.workers)
    sweep.to_csv(results, out / "results.csv")
    rows = summarise(results, args.target)
    write_json(out / "summary.json", dict(args=vars(args), rows=rows))
    fig, axes = new_figure(11, 3.2, ncols=3)
    ks = [r["k"] for r in rows]
    axes[0, 0].plot(ks, [r["accuracy"] for r in rows], "o-")
    axes[0, 0].set(xlabel="context pairs k", ylabel="held-out accuracy", title=f"n = {max(args.grid)} samples")
    axes[0, 1].plot(ks, [r["pairwise"] for r in rows], "o-", label="per example")
    axes[0, 1].plot(ks, [r["mean_row_pairwise"] for r in rows], "s--", label="mean row")
    axes[0, 1].set(xlabel="context pairs k", ylabel="pairwise score")
    axes[0, 1].legend()
    for seed_i in range(len(args.seeds)):
        axes[0, 2].plot(ks, [r["n_star"][seed_i] or float("nan") for r in rows], "o-")
    axes[0, 2].set(xlabel="context pairs k", ylabel=f"n* (accuracy >= {args.target})", yscale="log")
    save_figure(fig, out / "context_pairs.png")
    print(f"{'k':>2} {'acc':>6} {'pairwise':>8} {'mean-row':>8} {'balance':>8} {'best':>9} n*")
    for r in rows:
        print(f"{r['k']:>2} {r['accuracy']:6.3f} {r['pairwise']:8.3f} {r['mean_row_pairwise']:8.3f} "
              f"{r['balance']:8.3f} {r['best']:>9} {r['n_star']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
