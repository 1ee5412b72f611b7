"""Case study 1: emergence of the pairwise pattern over fine-tuning.

    python case_studies/emergence.py --preset paper --seed 0 --out case_studies/results/emergence

The preset's run (icr_interp.pipeline.runner: build, fine-tune), with the attention of
a fixed set of held-out prompts scored every --every steps.  Writes
emergence.json / emergence.csv (template scores and accuracy over steps, and
the run's held-out accuracy -- the number ``icr_interp.run`` reports for the
same config), emergence.png (curves) and emergence_rows_{start,end}.png
(query attention rows).
"""

import csv
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, seed, setup_threads, write_json  # noqa: E402

from icr_interp import finetune, viz  # noqa: E402

from icr_interp.storage import atomic
from icr_interp.pipeline.config import RunConfig  # noqa: E402
from icr_interp.analysis.scoring.dynamics import TemplateTracker  # noqa: E402
from icr_interp.pipeline.runner import build, measure  # noqa: E402
from icr_interp.pipeline.presets import PRESETS  # noqa: E402
from icr_interp.seeds import derive_seed  # noqa: E402


def main(argv=None) -> int:
    p = Parser(prog="emergence.py", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--steps", type=positive, default=None, help="fine-tuning steps (default: the preset's)")
    p.add_argument("--every", type=positive, default=10, help="steps between measurements")
    p.add_argument("--n-prompts", type=positive, default=512, help="held-out prompts scored")
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--out", default="case_studies/results/emergence")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(p, args.out)
    config = RunConfig.from_preset(args.preset, seed=args.seed, **({"train.steps": args.steps} if args.steps else {}))
    task, model = build(config)
    batch = task.sample(args.n_prompts, seed=derive_seed(config.seed, "analysis"))
    tracker = TemplateTracker(batch, every=args.every)
    tracker.measure(model, 0)
    start_rows, labels = viz.query_attention(model, batch)
    t0 = time.perf_counter()
    finetune(model, task, config=config.train, callback=tracker, progress=False)
    seconds = time.perf_counter() - t0
    held_out = measure(model, task, config)
    end_rows, _ = viz.query_attention(model, batch)
    s = tracker.series
    write_json(out / "emergence.json", dict(config=config.to_dict(), seconds=seconds, series=s, labels=labels,
                                            accuracy=held_out["accuracy"], loss=held_out["loss"]))
    table = io.StringIO(newline="")
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(list(s))
    writer.writerows(zip(*s.values()))
    atomic.write_text(out / "emergence.csv", table.getvalue())
    save_figure(viz.plot_training_curves(s, ["pairwise", "mean_row_pairwise", "balance", "accuracy"]),
                out / "emergence.png")
    for name, rows in (("start", start_rows), ("end", end_rows)):
        fig = viz.plot_query_attention(rows[:24, 0], labels, title=f"query attention at the {name} (24 prompts)")
        save_figure(fig, out / f"emergence_rows_{name}.png")
    for name, i in (("start", 0), ("end", -1)):
        print(f"{name + ':':<6} pairwise {s['pairwise'][i]:.3f} (mean row {s['mean_row_pairwise'][i]:.3f}), "
              f"balance {s['balance'][i]:.3f}, accuracy {s['accuracy'][i]:.3f}, best {s['best'][i]}")
    print(f"held-out accuracy {held_out['accuracy']:.3f} ({held_out['n_prompts']} prompts); "
          f"fine-tuning took {seconds:.1f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
