"""Layers: with two layers, where do relation inference and answer lookup sit? (docs/_drafts/layers_heads_results.md)

For every knowledge-base shape and seed, build the model with ``--layers``
layers (and ``--heads`` heads), fine-tune it with the library defaults, report
start and final accuracy and every head's template scores beside their null
(as ``heads.py``), then denoise (clean into corrupted) each layer's per-head
output and attention output at the query, each layer's query-row pattern on the
context, and the memory's stages, for the relation swap (relation inference
must change) and the query swap (the lookup must change):
:func:`icr_interp.layer_roles.job_locations`.

    python case_studies/layers.py --shapes 48x6x3 --seeds 0 1 --layers 2 --heads 1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, seed, write_json  # noqa: E402
from heads import measure, report  # noqa: E402
from starts import shape  # noqa: E402

import icr_interp as ii  # noqa: E402
from icr_interp.layer_roles import format_jobs, job_locations  # noqa: E402


def main(argv=None) -> int:
    p = Parser(prog="layers.py", description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["48x6x3", "64x8x4"])
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1])
    p.add_argument("--layers", type=positive, default=2)
    p.add_argument("--heads", type=positive, default=1)
    p.add_argument("--n-eval", type=positive, default=1024)
    p.add_argument("--n-template", type=positive, default=512)
    p.add_argument("--n-patch", type=positive, default=256, help="prompts of each corruption's patching")
    p.add_argument("--steps", type=int, default=None, help="fine-tuning steps (default: the library's)")
    p.add_argument("--n-samples", type=positive, default=None, help="training prompts (default: the library's)")
    p.add_argument("--models", default="runs/models", help="where fine-tuned state dicts are saved (git-ignored)")
    p.add_argument("--reuse", action="store_true", help="load a fine-tuned model saved in --models by an earlier run")
    p.add_argument("--threads", type=positive, default=1)
    p.add_argument("--out", default="case_studies/results/layers")
    args = p.parse_args(argv)
    try:
        shapes = [shape(t) for t in args.shapes]
        ii.ModelConfig(n_layers=args.layers, n_heads=args.heads).validate()
    except ValueError as e:
        p.error(str(e))
    import torch

    torch.set_num_threads(args.threads)
    out = out_dir(p, args.out)
    models = out_dir(p, args.models)
    train = dict(steps=args.steps, n_samples=args.n_samples)
    rows = []
    for s, r, k in shapes:
        for sd in args.seeds:
            row, model, task = measure(s, r, k, sd, args.layers, args.heads, models, args.reuse, train, args.n_eval,
                                       args.n_template)
            row["jobs"] = job_locations(model, task, task.sample(args.n_patch, seed=sd + 2), seed=sd)
            rows.append(row)
            print(report(row), flush=True)
            print(format_jobs(row["jobs"]), f"reliable: {row['jobs']['reliable']}", flush=True)
    write_json(out / "layers.json", dict(args=vars(args), rows=rows))
    print(f"wrote {out / 'layers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
