"""Case study 2: the fewest fine-tuning samples n* that reach the target, against the number of stored triplets N.

    python case_studies/sample_complexity.py --sizes 100 1000 10000 100000 --seeds 0 1 2 3 4 \
        --out case_studies/results/sample_complexity

One chain per (N, seed, attention parametrisation): the paper preset (shared answers,
bijective relations, k = 4, the default answer-tilted start) fine-tuned on training sets
of n prompts, n searched on a doubling grid from 1 and refined by bisection
(icr_interp.experiments.n_star), for the accuracy and the loss criterion.  Runs go through
the resumable sweep (results.jsonl: kill it and run the same command again to resume;
--executor ray --ray-address ADDR runs the same rounds on a cluster).  Writes
summary.json (runs, per-N n*, power and polylog fits with bootstrap 90% intervals)
and sample_complexity.png.  Scaling: N / R subjects and as many answers, R relations
(--n-relations; --small-relations below --small-below facts, so a small base keeps enough
subjects; --large-relations from --large-from facts on, so the 10^6 point keeps a
vocabulary two cores can read); d_model the exact basis when it fits in 1024
dimensions, else --d-large random directions.  Each worker uses one torch thread.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, learning_rate, out_dir, positive, save_figure, seed, write_json  # noqa: E402

import numpy as np  # noqa: E402

from icr_interp.experiments import sweep  # noqa: E402
from icr_interp.model.basis import n_directions_needed  # noqa: E402
from icr_interp.pipeline.config import RunConfig  # noqa: E402
from icr_interp.model.builder import ATTENTIONS  # noqa: E402
from icr_interp.experiments.n_star import SearchRule, chain_summary, run_search, summarize  # noqa: E402
from icr_interp.experiments.fits import Fit  # noqa: E402
from icr_interp.viz.figures import new_figure  # noqa: E402


def chain_configs(args) -> dict[str, RunConfig]:
    """One base RunConfig per (N, seed, attention); the search sets train.n_samples."""
    chains = {}
    for n in args.sizes:
        r = args.large_relations if n >= args.large_from else (
            args.small_relations if n < args.small_below else args.n_relations)
        s = max(2, round(n / r))
        exact = n_directions_needed(1 + 2 * s + r, 2 * args.k + 2, r)
        d = 64 * -(-exact // 64) if exact <= 1024 else args.d_large
        for attention in args.attention:
            for sd in args.seeds:
                chains[f"N={s * r} seed={sd} {attention}"] = RunConfig.from_preset("paper", seed=sd, **{
                    "knowledge.n_subjects": s, "knowledge.n_relations": r, "knowledge.n_answers": s,
                    "task.n_pairs": args.k, "model.attention": attention, "model.d_model": d,
                    "train.steps": args.steps, "train.lr": args.lr, "eval.n_prompts": args.n_eval,
                    "eval.n_template": 0})
    return chains


def plot(lines: list[dict], fits: dict, n_max: int):
    attentions = sorted({line["attention"] for line in lines})
    fig, axes = new_figure(5 * len(attentions), 4, ncols=len(attentions))
    for ax, attention in zip(np.atleast_1d(axes).flat, attentions):
        mine = [line for line in lines if line["attention"] == attention]
        hit = [(line["n_triplets"], line["n_star"]) for line in mine if line["n_star"] is not None]
        if hit:
            ax.scatter(*zip(*hit), color="k", alpha=0.5, zorder=3, label="n* per seed")
        miss = [line["n_triplets"] for line in mine if line["n_star"] is None]
        if miss:
            ax.scatter(miss, [n_max] * len(miss), color="r", marker="x", zorder=3,
                       label=f"not reached by n = {n_max} (not fitted)")
        sizes = sorted({line["n_triplets"] for line in mine})
        grid = np.logspace(np.log10(sizes[0]), np.log10(sizes[-1]))
        for kind, style, exp in (("power", "--", "gamma"), ("polylog", "-", "c")):
            f = fits[attention][kind]
            if f:
                lo, hi = f[f"{exp}_ci90"]
                ax.plot(grid, Fit(kind, f["a"], f[exp], f["rmse"]).predict(grid), style,
                        label=f"{kind}: {exp}={f[exp]:.2f} [{lo:.2f}, {hi:.2f}], rmse {f['rmse']:.2f}")
        ax.set(xscale="log", yscale="log", xlabel="stored triplets N", ylabel="samples n* (accuracy >= target)",
               title=f"attention: {attention}  (floor n* = 1)")
        ax.legend(fontsize=7)
    return fig


def main(argv=None) -> int:
    p = Parser(prog="sample_complexity.py", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=positive, nargs="+", default=[100, 1000, 10000, 100000])
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--attention", nargs="+", choices=ATTENTIONS, default=list(ATTENTIONS))
    p.add_argument("--n-relations", type=positive, default=8)
    p.add_argument("--small-relations", type=positive, default=4,
                   help="relations below --small-below facts (more subjects: fewer stored cross pairs, theory 8)")
    p.add_argument("--small-below", type=positive, default=1000)
    p.add_argument("--large-relations", type=positive, default=64)
    p.add_argument("--large-from", type=positive, default=1_000_000)
    p.add_argument("--k", type=positive, default=4)
    p.add_argument("--steps", type=positive, default=100)
    p.add_argument("--lr", type=learning_rate, default=0.003,
                   help="one learning rate for both parametrisations, or 'auto': each parametrisation's own recipe "
                        "(attention_params.DEFAULT_LR: 0.003 constant full, 0.1 cosine positional)")
    p.add_argument("--d-large", type=positive, default=1024)
    p.add_argument("--n-eval", type=positive, default=512)
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--loss-fraction", type=float, default=0.9)
    p.add_argument("--n-max", type=positive, default=1024, help="the reference: the largest training set")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--executor", choices=sweep.EXECUTORS, default="local")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--cached-only", action="store_true",
                   help="run nothing: summarise the runs already in --out (a sweep still running or stopped)")
    p.add_argument("--out", default="case_studies/results/sample_complexity")
    args = p.parse_args(argv)
    try:
        rule = SearchRule(target=args.target, loss_fraction=args.loss_fraction, n_max=args.n_max)
    except ValueError as e:
        p.error(str(e))
    try:
        chains = chain_configs(args)  # validates --lr and the sizes through RunConfig
    except ValueError as e:
        p.error(str(e))
    out = out_dir(p, args.out)
    runs = run_search(chains, out / "results.jsonl", rule, cached_only=args.cached_only, executor=args.executor,
                      workers=args.workers, ray_address=args.ray_address)
    lines = [chain_summary(chains[name], runs[name], rule) for name in chains if runs[name]]
    if not lines:
        print(f"sample_complexity.py: no finished runs in {out} to summarise", file=sys.stderr)
        return 1
    summary = summarize(lines)
    write_json(out / "summary.json", dict(args=vars(args), rule=rule.to_dict(), runs=lines, **summary))
    save_figure(plot(lines, summary["fits"], rule.n_max), out / "sample_complexity.png")
    for attention, rows in summary["per_n"].items():
        print(f"attention {attention}:")
        for row in rows:
            print(f"  N={row['n_triplets']:>7}: n* median {row['n_star_median']} 90% {row['n_star_ci90']}  "
                  f"reached {row['reached']}/{row['seeds']} (resolved {row['resolved']}, non-monotone "
                  f"{row['non_monotone']})  at floor {row['at_floor']}  "
                  f"start acc <= {row['start_accuracy_max']:.3f}  {row['seconds']:.0f} s")
        f = summary["fits"][attention]
        if f["power"]:
            print(f"  power gamma={f['power']['gamma']:.3f} {f['power']['gamma_ci90']}; polylog c={f['polylog']['c']:.3f}"
                  f" {f['polylog']['c_ci90']}; better: {f['better']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
