"""Starts: held-out accuracy of each start before fine-tuning, and after it (docs/results.md, "Starts").

For every knowledge-base shape and seed, build the model with each start
(``answer``, ``subject``, ``sink``) at the given tilt, measure held-out
accuracy (and the Bayes ceiling of the same prompts), optionally fine-tune with
the given budget, and measure again.  A start that already recalls >= 0.95
measures nothing; a dead one (sink) cannot leave its start.

    python case_studies/starts.py --shapes 64x8x4 48x6x3 --seeds 0 1 --tilt 4 --steps 0
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, seed  # noqa: E402

import icr_interp as ii  # noqa: E402
from icr_interp.storage import atomic  # noqa: E402


def shape(text: str) -> tuple[int, int, int]:
    """``SxRxK``: S subjects (and as many shared answers), R relations, K context pairs."""
    try:
        s, r, k = (int(x) for x in text.split("x"))
    except ValueError:
        raise ValueError(f"a shape is SxRxK (e.g. 64x8x4), got {text!r}") from None
    return s, r, k


def measure(s: int, r: int, k: int, seed_: int, start: str, tilt: float, steps: int, n_samples: int,
            lr: float, n_eval: int) -> dict:
    """One row: the start's accuracy, the ceiling, and (if steps > 0) the accuracy after fine-tuning."""
    task = ii.ICRecallTask(ii.KnowledgeBase.random(s, r, s, answer_overlap=1.0, seed=seed_), n_pairs=k)
    model = ii.build_model(task, seed=seed_, start=start, init_tilt=tilt)
    before = ii.evaluate(model, task, n_prompts=n_eval, seed=seed_)
    row = dict(shape=f"{s}x{r}x{k}", seed=seed_, start=start, tilt=tilt, start_accuracy=before["accuracy"],
               ceiling=before["ceiling"], start_loss=before["loss"])
    if steps:
        t0 = time.perf_counter()
        ii.finetune(model, task, n_samples=n_samples, steps=steps, lr=lr, seed=seed_, progress=False)
        after = ii.evaluate(model, task, n_prompts=n_eval, seed=seed_)
        row.update(accuracy=after["accuracy"], loss=after["loss"], seconds=time.perf_counter() - t0)
    return row


def main(argv=None) -> int:
    p = Parser(prog="starts.py", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["64x8x4", "48x6x3", "96x12x5", "128x8x4", "32x4x3"])
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1])
    p.add_argument("--starts", nargs="+", default=["answer", "subject", "sink"], choices=("answer", "subject", "sink"))
    p.add_argument("--tilt", type=float, default=4.0)
    p.add_argument("--steps", type=int, default=0, help="fine-tuning steps (0: measure the starts only)")
    p.add_argument("--n-samples", type=positive, default=2048)
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--n-eval", type=positive, default=512)
    p.add_argument("--threads", type=positive, default=1)
    p.add_argument("--out", default="case_studies/results/starts")
    args = p.parse_args(argv)
    try:
        shapes = [shape(t) for t in args.shapes]
    except ValueError as e:
        p.error(str(e))
    import torch

    torch.set_num_threads(args.threads)
    out = out_dir(p, args.out)
    rows = []
    for s, r, k in shapes:
        for sd in args.seeds:
            for start in args.starts:
                row = measure(s, r, k, sd, start, args.tilt, args.steps, args.n_samples, args.lr, args.n_eval)
                rows.append(row)
                after = f" -> {row['accuracy']:.3f}" if "accuracy" in row else ""
                print(f"{row['shape']:>9} seed {sd} {start:<7} start {row['start_accuracy']:.3f}{after} "
                      f"(ceiling {row['ceiling']:.3f})", flush=True)
    atomic.write_json(out / "starts.json", dict(args=vars(args), rows=rows))
    print(f"wrote {out / 'starts.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
