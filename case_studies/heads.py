"""Heads: with two heads, is the pairwise pattern per head, or split across heads?

Measured in docs/results.md ("Two layers and several heads").

For every knowledge-base shape and seed, build the model with ``--heads`` heads
(and ``--layers`` layers), fine-tune it with the library defaults, and report
the start and final accuracy, each head's template scores beside their null
(``pairwise_null``), each layer's OV-weighted combined row, and the verdict of
:func:`icr_interp.analysis.causal.job_split.head_split`: ``per head`` (every head balanced),
``split across heads`` (one-sided heads whose combination is balanced) or
``mixed``.

    python case_studies/heads.py --shapes 48x6x3 64x8x4 --seeds 0 1 --heads 2
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, seed, write_json  # noqa: E402
from starts import shape  # noqa: E402

import icr_interp as ii  # noqa: E402
from icr_interp.experiments.shapes import SCORE_KEYS, measure  # noqa: E402

def report(row: dict) -> str:
    lines = [f"{row['shape']:>9} seed {row['seed']} L{row['n_layers']}H{row['n_heads']}: start "
             f"{row['start_accuracy']:.3f} -> {row['accuracy']:.3f} (ceiling {row['ceiling']:.3f})"]
    split = row["split"]
    for h in row["heads"]:
        lay, hd = h["layer"], h["head"]
        lines.append(f"    L{lay} h{hd}: subj {split['subject'][lay][hd]:.3f} ans {split['answer'][lay][hd]:.3f} "
                     f"pairwise {h['pairwise']:.3f} (null {h['pairwise_null']:.3f}) balance {h['balance']:.3f} "
                     f"-> {h['best']}")
    for c in row["combined"]:
        lines.append(f"    L{c['layer']} combined: pairwise {c['pairwise']:.3f} (null {c['pairwise_null']:.3f}) "
                     f"balance {c['balance']:.3f} -> {c['best']}; {split['verdict'][c['layer']]}")
    return "\n".join(lines)


def parser(prog: str, doc: str, layers: int, heads: int, out: str) -> Parser:
    """The arguments heads.py and layers.py share (shapes, seeds, architecture, budgets, saved models)."""
    p = Parser(prog=prog, description=doc.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["48x6x3", "64x8x4"])
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1])
    p.add_argument("--heads", type=positive, default=heads)
    p.add_argument("--layers", type=positive, default=layers)
    p.add_argument("--n-eval", type=positive, default=1024)
    p.add_argument("--n-template", type=positive, default=512)
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the library's)")
    p.add_argument("--n-samples", type=positive, default=None, help="training prompts (default: the library's)")
    p.add_argument("--models", default="runs/models", help="where fine-tuned state dicts are saved (git-ignored)")
    p.add_argument("--reuse", action="store_true", help="load a fine-tuned model saved in --models by an earlier run")
    p.add_argument("--threads", type=positive, default=1)
    p.add_argument("--out", default=out)
    return p


def parse(p: Parser, argv) -> tuple:
    """Parsed arguments and the shapes; a shape or an architecture the build refuses exits 2 with one line."""
    args = p.parse_args(argv)
    try:
        shapes = [shape(t) for t in args.shapes]
        ii.ModelConfig(n_layers=args.layers, n_heads=args.heads).validate()
    except ValueError as e:
        p.error(str(e))
    return args, shapes


def each_run(p: Parser, args, shapes):
    """Set the threads and the models folder, then yield (seed, row, model, task) for every shape and seed."""
    import torch

    torch.set_num_threads(args.threads)
    models = out_dir(p, args.models)
    train = dict(steps=args.steps, n_samples=args.n_samples)
    for s, r, k in shapes:
        for sd in args.seeds:
            yield (sd, *measure(s, r, k, sd, args.layers, args.heads, models, args.reuse, train, args.n_eval,
                                args.n_template))


def main(argv=None) -> int:
    p = parser("heads.py", __doc__, layers=1, heads=2, out="case_studies/results/heads")
    args, shapes = parse(p, argv)
    out = out_dir(p, args.out)
    rows = []
    for _, row, _, _ in each_run(p, args, shapes):
        rows.append(row)
        print(report(row), flush=True)
    write_json(out / "heads.json", dict(args=vars(args), rows=rows))
    print(f"wrote {out / 'heads.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
