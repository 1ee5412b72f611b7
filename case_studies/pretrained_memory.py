"""Case study 4: a pretrained memory instead of a constructed one.

    python case_studies/pretrained_memory.py --seed 0 --out case_studies/results/pretrained_memory

The paper preset twice -- memory="constructed" (pair construction) and
memory="pretrained" (fitted on factual-recall exercises, icr_interp.model.memory.pretrained)
-- on the same knowledge base, fine-tuned with the same settings and start,
tracking accuracy and template scores over steps on the same held-out
prompts.  Writes pretrained_memory.json and a side-by-side figure.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, seed, setup_threads, write_json  # noqa: E402

from icr_interp import finetune, viz  # noqa: E402
from icr_interp.pipeline.config import RunConfig  # noqa: E402
from icr_interp.analysis.scoring.dynamics import TemplateTracker  # noqa: E402
from icr_interp.pipeline.runner import build, measure  # noqa: E402
from icr_interp.seeds import derive_seed  # noqa: E402
from icr_interp.viz.figures import new_figure  # noqa: E402


def config_for(memory: str, args) -> RunConfig:
    """The paper preset with this memory and the command line's sizes and budget."""
    s, r, a = args.kb
    overrides = {"knowledge.n_subjects": s, "knowledge.n_relations": r, "knowledge.n_answers": a,
                 "task.n_pairs": args.k, "train.steps": args.steps, "train.n_samples": args.n_samples,
                 "model.memory": memory, "eval.n_template": 0}
    if memory == "pretrained":
        overrides["model.pretrain"] = {"steps": args.pretrain_steps}
    return RunConfig.from_preset("paper", seed=args.seed, **overrides)


def track(config: RunConfig, every: int, n_prompts: int) -> dict:
    """Build (pretraining a pretrained memory), then fine-tune while scoring fixed held-out prompts."""
    t0 = time.perf_counter()
    task, model = build(config)
    built = time.perf_counter() - t0
    batch = task.sample(n_prompts, seed=derive_seed(config.seed, "analysis"))
    tracker = TemplateTracker(batch, every=every)
    tracker.measure(model, 0)
    finetune(model, task, config=config.train, callback=tracker, progress=False)
    rows, labels = viz.query_attention(model, batch)
    return dict(memory=config.model.memory, build_seconds=built, series=tracker.series,
                held_out=measure(model, task, config), mean_row=rows[:, 0].mean(0).tolist(), labels=labels)


def main(argv=None) -> int:
    p = Parser(prog="pretrained_memory.py", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--kb", type=positive, nargs=3, default=[64, 8, 64], metavar=("S", "R", "A"))
    p.add_argument("--k", type=positive, default=4)
    p.add_argument("--steps", type=positive, default=300)
    p.add_argument("--n-samples", type=positive, default=2048)
    p.add_argument("--pretrain-steps", type=positive, default=1500)
    p.add_argument("--every", type=positive, default=10)
    p.add_argument("--n-prompts", type=positive, default=512, help="held-out prompts scored over training")
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--out", default="case_studies/results/pretrained_memory")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(p, args.out)
    try:
        configs = [config_for(m, args) for m in ("constructed", "pretrained")]
    except ValueError as e:
        p.error(str(e))
    runs = [track(c, args.every, args.n_prompts) for c in configs]
    write_json(out / "pretrained_memory.json", dict(args=vars(args), runs=runs))
    fig, axes = new_figure(12, 6.4, nrows=2, ncols=3)
    for col, key in enumerate(("accuracy", "pairwise", "balance")):
        for r in runs:
            axes[0, col].plot(r["series"]["step"], r["series"][key], label=r["memory"])
        axes[0, col].set(xlabel="step", ylabel=key)
        axes[0, col].legend()
    for col, r in enumerate(runs):
        axes[1, col].bar(range(len(r["labels"])), r["mean_row"])
        axes[1, col].set_xticks(range(len(r["labels"])), r["labels"], rotation=60, fontsize=7)
        axes[1, col].set(title=f"{r['memory']}: mean query row after fine-tuning", ylabel="attention")
    axes[1, 2].axis("off")
    save_figure(fig, out / "pretrained_memory.png")
    for r in runs:
        s = r["series"]
        print(f"{r['memory']:>11}: accuracy {s['accuracy'][0]:.3f} -> {r['held_out']['accuracy']:.3f}; pairwise "
              f"{s['pairwise'][0]:.3f} -> {s['pairwise'][-1]:.3f} (mean row {s['mean_row_pairwise'][-1]:.3f}); "
              f"balance {s['balance'][-1]:.3f}; best {s['best'][-1]} (mean row {s['mean_row_best'][-1]}); "
              f"built in {r['build_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
