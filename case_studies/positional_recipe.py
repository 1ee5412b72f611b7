"""Positional attention's fine-tuning recipe: learning rate and schedule against the per-example pattern.

For each shape (S subjects x R relations over S shared answers, k pairs, seed) and
each recipe (a learning rate, or ``auto``: finetune's per-parametrisation default,
0.1 with a cosine decay for positional attention), build the positional model with
the default start, fine-tune with ``finetune``'s defaults otherwise (4096 prompts,
400 steps), and measure held-out accuracy and loss (``evaluate``, 1024 prompts)
and the per-example template scores against their null (``score_templates``, 256
prompts).  docs/results.md, "Positional attention", holds the table and how the
default was chosen (10 shapes) and checked (8 more).

    python case_studies/positional_recipe.py --shapes 32x4x3x21 48x6x4x12 --lrs 0.03 0.1 auto
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, learning_rate, out_dir, positive, setup_threads, write_json  # noqa: E402

import icr_interp as ii  # noqa: E402


def shape(text: str) -> tuple[int, int, int, int]:
    """``SxRxKxSEED`` -> four integers (S >= 2, R >= 1, k >= 1, seed >= 0)."""
    parts = text.split("x")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f"a shape is SxRxKxSEED (e.g. 32x4x3x21), got {text!r}")
    s, r, k, seed = map(int, parts)
    if s < 2 or r < 1 or k < 1:
        raise argparse.ArgumentTypeError(f"need S >= 2, R >= 1, k >= 1, got {text!r}")
    return s, r, k, seed


def measure(s: int, r: int, k: int, seed: int, lr: float | None, steps: int, n_samples: int, n_eval: int,
            n_template: int) -> dict:
    """One fine-tuning run from the default start; its accuracy, loss and template scores."""
    start = time.time()
    task = ii.ICRecallTask(ii.KnowledgeBase.random(s, r, s, answer_overlap=1.0, seed=seed), n_pairs=k)
    model = ii.build_model(task, attention="positional", seed=seed)
    before = ii.evaluate(model, task, n_prompts=n_eval, seed=seed + 100)
    # lr None: the parametrisation's recipe (0.1, cosine); a given lr runs constant (icr_interp.finetune)
    ii.finetune(model, task, n_samples=n_samples, steps=steps, lr=lr, progress=False)
    after = ii.evaluate(model, task, n_prompts=n_eval, seed=seed + 100)
    scores = ii.score_templates(model, task.sample(n_template, seed=seed + 200)).to_dict()
    return dict(shape=f"{s}x{r}x{k}x{seed}", lr=model.icr_train.lr, schedule=model.icr_train.schedule,
                start_accuracy=before["accuracy"], accuracy=after["accuracy"], loss=after["loss"],
                pairwise=scores["pairwise"], pairwise_null=scores["pairwise_null"], p_value=scores["p_value"],
                balance=scores["balance"], best=scores["best"], seconds=time.time() - start)


def main(argv=None) -> int:
    p = Parser(prog="positional_recipe.py", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", type=shape, nargs="+", required=True, help="SxRxKxSEED, e.g. 48x6x4x12")
    p.add_argument("--lrs", type=learning_rate, nargs="+", default=[None],
                   help="numbers (a constant lr) or 'auto' (the recipe: 0.1, cosine)")
    p.add_argument("--steps", type=positive, default=400)
    p.add_argument("--n-samples", type=positive, default=4096)
    p.add_argument("--n-eval", type=positive, default=1024)
    p.add_argument("--n-template", type=positive, default=256)
    p.add_argument("--threads", type=positive, default=1, help="torch threads (set explicitly)")
    p.add_argument("--out", default="case_studies/results/positional_recipe")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(p, args.out)
    rows = []
    for s, r, k, seed in args.shapes:
        for lr in args.lrs:
            row = measure(s, r, k, seed, lr, args.steps, args.n_samples, args.n_eval, args.n_template)
            rows.append(row)
            print(f"{row['shape']:>14} lr {row['lr']:g} {row['schedule']:<8} accuracy {row['start_accuracy']:.3f} -> "
                  f"{row['accuracy']:.3f} loss {row['loss']:.3f}  pairwise {row['pairwise']:.3f} "
                  f"null {row['pairwise_null']:.3f} best {row['best']}", flush=True)
    write_json(out / "positional_recipe.json", dict(args={**vars(args), "shapes": [list(x) for x in args.shapes]},
                                                   rows=rows))
    print(f"wrote {out / 'positional_recipe.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
