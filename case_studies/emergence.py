"""Case study 1: emergence of the pairwise pattern over fine-tuning.

    python case_studies/emergence.py --preset paper --seed 0 --out case_studies/results/emergence

Writes emergence.json / emergence.csv (template scores and accuracy every
--every steps on held-out prompts), emergence.png (curves) and
emergence_rows.png (query attention rows at the start and the end).
"""

import csv
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, setup_threads, write_json  # noqa: E402

from icr_interp import finetune, viz  # noqa: E402
from icr_interp.dynamics import TemplateTracker  # noqa: E402
from icr_interp.presets import PRESETS, build_from_preset, get_preset  # noqa: E402


def main(argv=None) -> int:
    p = Parser(prog="emergence.py", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=positive, default=None, help="fine-tuning steps (default: the preset's)")
    p.add_argument("--every", type=positive, default=10, help="steps between measurements")
    p.add_argument("--n-prompts", type=positive, default=512, help="held-out prompts scored")
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--out", default="case_studies/results/emergence")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(args.out)
    kb, task, model = build_from_preset(args.preset, seed=args.seed)
    batch = task.sample(args.n_prompts, seed=args.seed + 777_777)
    tracker = TemplateTracker(batch, every=args.every)
    tracker.measure(model, 0)
    start_rows, labels = viz.query_attention(model, batch)
    ft = {**get_preset(args.preset).finetune_args(), **({"steps": args.steps} if args.steps else {})}
    t0 = time.perf_counter()
    finetune(model, task, seed=args.seed, callback=tracker, **ft)
    seconds = time.perf_counter() - t0
    end_rows, _ = viz.query_attention(model, batch)
    s = tracker.series
    write_json(out / "emergence.json", dict(preset=args.preset, seed=args.seed, finetune=ft, seconds=seconds,
                                            series=s, labels=labels))
    with open(out / "emergence.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(list(s))
        w.writerows(zip(*s.values()))
    save_figure(viz.plot_training_curves(s, ["pairwise", "mean_row_pairwise", "balance", "accuracy"]),
                out / "emergence.png")
    fig = viz.plot_query_attention(start_rows[:24, 0], labels, title="query attention at the start (24 prompts)")
    save_figure(fig, out / "emergence_rows_start.png")
    fig = viz.plot_query_attention(end_rows[:24, 0], labels, title="query attention at the end (24 prompts)")
    save_figure(fig, out / "emergence_rows_end.png")
    print(f"start: pairwise {s['pairwise'][0]:.3f} (mean row {s['mean_row_pairwise'][0]:.3f}), "
          f"balance {s['balance'][0]:.3f}, accuracy {s['accuracy'][0]:.3f}, best {s['best'][0]}")
    print(f"end:   pairwise {s['pairwise'][-1]:.3f} (mean row {s['mean_row_pairwise'][-1]:.3f}), "
          f"balance {s['balance'][-1]:.3f}, accuracy {s['accuracy'][-1]:.3f}, best {s['best'][-1]}")
    print(f"fine-tuning took {seconds:.1f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
