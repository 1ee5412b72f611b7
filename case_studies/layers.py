"""Layers: with two layers, where do relation inference and answer lookup sit? (docs/results.md, "Two layers and several heads")

For every knowledge-base shape and seed, build the model with ``--layers``
layers (and ``--heads`` heads), fine-tune it with the library defaults, report
start and final accuracy and every head's template scores beside their null
(as ``heads.py``), then denoise (clean into corrupted) each layer's per-head
output and attention output at the query, each layer's query-row pattern on the
context, and the memory's stages, for the relation swap (relation inference
must change) and the query swap (the lookup must change):
:func:`icr_interp.analysis.causal.job_split.job_locations`.

    python case_studies/layers.py --shapes 48x6x3 --seeds 0 1 --layers 2 --heads 1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import out_dir, positive, write_json  # noqa: E402
from heads import each_run, parse, parser, report  # noqa: E402

from icr_interp.analysis.causal.job_split import format_jobs, job_locations  # noqa: E402


def main(argv=None) -> int:
    p = parser("layers.py", __doc__, layers=2, heads=1, out="case_studies/results/layers")
    p.add_argument("--n-patch", type=positive, default=256, help="prompts of each corruption's patching")
    args, shapes = parse(p, argv)
    out = out_dir(p, args.out)
    rows = []
    for sd, row, model, task in each_run(p, args, shapes):
        row["jobs"] = job_locations(model, task, task.sample(args.n_patch, seed=sd + 2), seed=sd)
        rows.append(row)
        print(report(row), flush=True)
        print(format_jobs(row["jobs"]), f"reliable: {row['jobs']['reliable']}", flush=True)
    write_json(out / "layers.json", dict(args=vars(args), rows=rows))
    print(f"wrote {out / 'layers.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
