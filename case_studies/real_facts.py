"""Real facts: where attention goes for shared- and private-answer relations of the country base.

    python case_studies/real_facts.py --ks 3 --seeds 0 1 2 --starts answer subject

The built-in base (or ``--csv``) through ``icr_interp.run``, default fine-tuning, one run per (k, start, seed):
held-out accuracy at start and end against the Bayes ceiling, the headline template scores, and on the scored
prompts split by relation group -- relations sharing answers with another ("shared") and the rest ("private")
-- the query row's mass by role, the pairwise score and its null, the accuracy.  The fine-tuned model is then
patched (relation / query swaps, ``circuit_summary``).  docs/results.md ("Real facts").
"""

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, seed, setup_threads, write_json  # noqa: E402

from icr_interp import RunConfig, viz  # noqa: E402
from icr_interp.experiments.real_facts import ROLES, relation_groups, run_one  # noqa: E402


def figure(runs: list[dict], path: Path) -> None:
    """Mean query-row mass by role (over seeds, first k), start vs end; one panel per start and relation group."""
    starts, k = sorted({r["start"] for r in runs}), runs[0]["k"]
    fig, axes = viz.new_figure(7.5, 2.6 * len(starts), nrows=len(starts), ncols=2, sharey=True)
    axes[0, 0].set_ylim(0, 1)
    colors = [viz.ROLE_COLORS[c] for c in ("s", "a", "<bos>", "query")]
    for i, start in enumerate(starts):
        sel = [r for r in runs if r["start"] == start and r["k"] == k]
        for ax, group in zip(axes[i], ("shared", "private")):
            for x, when in enumerate(("start", "end")):
                mass = [sum(r["groups"][when][group].get(role, 0.0) for r in sel) / len(sel) for role in ROLES]
                ax.bar([x * 5 + n for n in range(4)], mass, color=colors, edgecolor="black" if x else None)
            ax.set_xticks([1.5, 6.5], ["start", "fine-tuned"])
            ax.set_title(f"{start} start: {group}-answer relations (k={k}, {len(sel)} seeds)", fontsize=8)
        axes[i, 0].set_ylabel("query-row mass")
    axes[0, 1].legend(axes[0, 1].patches[:4], ROLES, fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = Parser(prog="real_facts.py", description=__doc__.splitlines()[0])
    p.add_argument("--csv", help="a (subject, relation, answer) CSV; default: the built-in country base")
    p.add_argument("--ks", type=positive, nargs="+", default=[3])
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1, 2])
    p.add_argument("--starts", nargs="+", choices=("answer", "subject", "sink"), default=["answer", "subject"])
    for flag, kind, default in (("--init-tilt", float, None), ("--steps", int, None), ("--n-samples", positive, None),
                                ("--n-eval", positive, 1024), ("--n-template", positive, 512),
                                ("--n-patch", int, 256)):  # None: ModelConfig's / TrainConfig's; --n-patch 0: skip
        p.add_argument(flag, type=kind, default=default)
    p.add_argument("--threads", type=positive, default=1)
    p.add_argument("--out", default="case_studies/results/real_facts")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(p, args.out)
    base_kb = {"knowledge.csv": args.csv} if args.csv else {"knowledge.builtin": "countries"}
    options = {**base_kb, "eval.n_prompts": args.n_eval, "eval.n_template": args.n_template,
               "train.steps": args.steps, "train.n_samples": args.n_samples, "model.init_tilt": args.init_tilt}
    try:
        base = RunConfig(name="real_facts").with_overrides(**{k: v for k, v in options.items() if v is not None})
        groups = relation_groups(kb := base.knowledge.build(0))
    except (OSError, ValueError) as e:
        p.error(str(e))
    runs = []
    for k, start, s in itertools.product(args.ks, args.starts, args.seeds):
        runs.append(r := run_one(base.with_overrides(seed=s, **{"task.n_pairs": k, "model.start": start}), groups,
                                 args.n_patch))
        a, g = r["accuracy"], r["groups"]["end"]
        print(f"k={k} {start} seed {s}: accuracy {a['start']:.3f} -> {a['end']:.3f} (ceiling {a['ceiling']:.3f}); "
              f"answer mass at end: " + ", ".join(f"{n} {g[n].get('answers', 0):.2f}" for n in groups), flush=True)
    names = {n: [kb.relations[r] for r in rs] for n, rs in groups.items()}
    write_json(out / "summary.json", dict(args=vars(args), knowledge=args.csv or "builtin:countries", groups=names,
                                          runs=runs))
    figure(runs, out / "real_facts.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
