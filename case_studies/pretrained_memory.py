"""Case study 4: a pretrained memory instead of a constructed one.

    python case_studies/pretrained_memory.py --seed 0 --out case_studies/results/pretrained_memory

Builds the reference task twice -- memory="constructed" (pair construction) and
memory="pretrained" (fitted on factual-recall exercises, icr_interp.pretrain)
-- fine-tunes both with the same settings and start, and tracks accuracy and
template scores over steps.  Writes pretrained_memory.json and a side-by-side
figure.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, setup_threads, write_json  # noqa: E402

from icr_interp import KnowledgeBase, ICRecallTask, build_model, evaluate, finetune, viz  # noqa: E402
from icr_interp.dynamics import TemplateTracker  # noqa: E402
from icr_interp.viz import _figure  # noqa: E402


def run(memory: str, task, seed: int, steps: int, n_samples: int, every: int, batch, pretrain_steps: int) -> dict:
    t0 = time.perf_counter()
    model = build_model(task, memory=memory, seed=seed,
                        **({"pretrain": {"steps": pretrain_steps}} if memory == "pretrained" else {}))
    built = time.perf_counter() - t0
    tracker = TemplateTracker(batch, every=every)
    tracker.measure(model, 0)
    finetune(model, task, n_samples=n_samples, steps=steps, seed=seed, callback=tracker)
    rows, labels = viz.query_attention(model, batch)
    return dict(memory=memory, build_seconds=built, series=tracker.series,
                held_out=evaluate(model, task, n_prompts=1024, seed=seed), mean_row=rows[:, 0].mean(0).tolist(),
                labels=labels)


def main(argv=None) -> int:
    p = Parser(prog="pretrained_memory.py", description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kb", type=positive, nargs=3, default=[64, 8, 64], metavar=("S", "R", "A"))
    p.add_argument("--k", type=positive, default=4)
    p.add_argument("--steps", type=positive, default=300)
    p.add_argument("--n-samples", type=positive, default=2048)
    p.add_argument("--pretrain-steps", type=positive, default=1500)
    p.add_argument("--every", type=positive, default=10)
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--out", default="case_studies/results/pretrained_memory")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(args.out)
    task = ICRecallTask(KnowledgeBase.random(*args.kb, answer_overlap=1.0, seed=args.seed), n_pairs=args.k)
    batch = task.sample(512, seed=args.seed + 777_777)
    runs = [run(m, task, args.seed, args.steps, args.n_samples, args.every, batch, args.pretrain_steps)
            for m in ("constructed", "pretrained")]
    write_json(out / "pretrained_memory.json", dict(args=vars(args), runs=runs))
    fig, axes = _figure(12, 6.4, nrows=2, ncols=3)
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
