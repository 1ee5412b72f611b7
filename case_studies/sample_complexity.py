"""Case study 2: fine-tuning samples needed vs number of stored triplets N.

    python case_studies/sample_complexity.py --sizes 128 1024 10000 100000 --seeds 0 1 \
        --grid 16 64 256 1024 4096 --out case_studies/results/sample_complexity

The paper preset at every N (balanced bijective relations, shared answers, k = 4) and seed,
fine-tunes on training sets of each size on --grid (plus a 0-step run for the
starting accuracy), through the resumable sweep (results.jsonl: kill it and run
the same command again to resume).  Reports n* for two criteria (see
icr_interp.scaling), power-law and polylog fits, and a figure.  d_model: the
exact basis when it fits in 1024 dimensions, else --d-large (random directions;
crosstalk grows with N, see docs/results.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, seed, write_json  # noqa: E402

import numpy as np  # noqa: E402

from icr_interp import sweep  # noqa: E402
from icr_interp.basis import default_d_model  # noqa: E402
from icr_interp.knowledge import KnowledgeBase  # noqa: E402
from icr_interp.scaling import Fit, fit_both, sample_complexity  # noqa: E402
from icr_interp.task import ICRecallTask  # noqa: E402
from icr_interp.viz import _figure  # noqa: E402


def d_model_for(size: tuple[int, int, int], n_pairs: int, d_large: int) -> int:
    """The exact basis if it fits in 1024 dimensions, else ``d_large``."""
    task = ICRecallTask(KnowledgeBase.random(*size, seed=0), n_pairs=n_pairs)
    d = default_d_model(task.vocab, task.n_ctx, cap=10**9)
    return d if d <= 1024 else d_large


def configs(args) -> list:
    """The paper preset at every size, seed and training-set size, plus a 0-step run for the start."""
    out = []
    sizes = [size for n in args.sizes
             for size in sweep.sizes_for_triplets([n], args.n_relations if n >= 1000 else args.small_relations)]
    for size in sizes:
        d = d_model_for(size, args.k, args.d_large)
        seeds = args.seeds if size[0] * size[1] < args.one_seed_above else args.seeds[:1]
        common = dict(kb_sizes=[size], n_pairs=args.k, seeds=seeds, d_model=d, n_eval=args.n_eval,
                      n_template=args.n_template)
        out += sweep.expand_grid("paper", n_samples=args.grid, steps=args.steps, **common)
        out += sweep.expand_grid("paper", n_samples=[args.grid[0]], steps=0, **common)  # the starting point
    return out


def plot(rows_by_criterion: dict, fits: dict):
    fig, axes = _figure(10, 4, ncols=2)
    for ax, (criterion, rows) in zip(axes.flat, rows_by_criterion.items()):
        hit = [(r["n_triplets"], r["n_star"]) for r in rows if r["n_star"] is not None]
        miss = [r["n_triplets"] for r in rows if r["n_star"] is None]
        if hit:
            ax.scatter(*zip(*hit), color="k", zorder=3, label="n* per seed")
        for n in miss:
            ax.axvline(n, color="r", ls=":", lw=1)
        grid = np.logspace(np.log10(min(r["n_triplets"] for r in rows)), np.log10(max(r["n_triplets"] for r in rows)))
        for kind, style in (("power", "--"), ("polylog", "-")):
            f = fits[criterion][kind]
            if f:
                label = f"{kind}: a={f['a']:.3g}, exp={f['exponent']:.3f}, rmse={f['rmse']:.2f}"
                ax.plot(grid, Fit(**f).predict(grid), style, label=label)
        ax.set(xscale="log", yscale="log", xlabel="stored triplets N", ylabel="samples n*",
               title=f"criterion: {criterion}" + (" (red: not reached)" if miss else ""))
        ax.legend(fontsize=7)
    return fig


def main(argv=None) -> int:
    p = Parser(prog="sample_complexity.py", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=positive, nargs="+", default=[128, 1024, 10000, 100000])
    p.add_argument("--n-relations", type=positive, default=8, help="relations for N >= 1000")
    p.add_argument("--small-relations", type=positive, default=4,
                   help="relations for N < 1000 (more subjects: fewer cross-pair confounds)")
    p.add_argument("--k", type=positive, default=4)
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1])
    p.add_argument("--one-seed-above", type=positive, default=50_000, help="use only the first seed above this N")
    p.add_argument("--grid", type=positive, nargs="+", default=[16, 64, 256, 1024, 4096])
    p.add_argument("--steps", type=positive, default=200)
    p.add_argument("--d-large", type=positive, default=1024)
    p.add_argument("--n-eval", type=positive, default=512)
    p.add_argument("--n-template", type=positive, default=256)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--executor", choices=sweep.EXECUTORS, default="local")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--out", default="case_studies/results/sample_complexity")
    args = p.parse_args(argv)
    if not 0 < args.target <= 1:
        p.error("--target must lie in (0, 1]")
    out = out_dir(p, args.out)
    results = sweep.run_sweep(configs(args), out / "results.jsonl", executor=args.executor, workers=args.workers,
                              ray_address=args.ray_address)
    sweep.to_csv(results, out / "results.csv")
    results = [sweep.flat(r) for r in results]
    trained = [r for r in results if r["steps"] > 0]
    start = {r["n_triplets"]: r["accuracy"] for r in results if r["steps"] == 0 and r["seed"] == args.seeds[0]}
    rows = {c: sample_complexity(trained, args.target, c) for c in ("accuracy", "pattern")}
    fits = {c: fit_both(rows[c]) for c in rows}
    write_json(out / "summary.json", dict(args=vars(args), start_accuracy=start, n_star=rows, fits=fits))
    save_figure(plot(rows, fits), out / "sample_complexity.png")
    for c in rows:
        print(f"criterion {c}:")
        for r in rows[c]:
            print(f"  N={r['n_triplets']:>7} seed {r['seed']}: n*={r['n_star']}  plateau acc {r['plateau']:.3f}"
                  f"  start acc {start.get(r['n_triplets'], float('nan')):.3f}")
        f = fits[c]
        if f["power"]:
            print(f"  power law gamma={f['power']['exponent']:.3f} (rmse {f['power']['rmse']:.2f}); polylog "
                  f"c={f['polylog']['exponent']:.3f} (rmse {f['polylog']['rmse']:.2f}); better: {f['better']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
