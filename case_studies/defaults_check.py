"""Check that ``finetune``'s defaults reach >= 0.95 held-out accuracy beyond the reference size.

    python case_studies/defaults_check.py --out case_studies/results/defaults_check

Shared-answer knowledge bases of several sizes and numbers of pairs, each with
its own seed, built with ``build_model(task, seed=seed)`` and fine-tuned with
``finetune(model, task, seed=seed)`` -- no argument tuned per case.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, setup_threads, write_json  # noqa: E402

from icr_interp import ICRecallTask, KnowledgeBase, build_model, evaluate, finetune  # noqa: E402

CASES = [(32, 4, 2, 1), (128, 16, 6, 2), (32, 16, 6, 3), (128, 4, 2, 4), (64, 8, 3, 5), (96, 12, 5, 6), (32, 4, 6, 7)]


def main(argv=None) -> int:
    p = Parser(prog="defaults_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-cases", type=int, default=len(CASES), help="run only the first N cases (smoke test)")
    p.add_argument("--out", default="case_studies/results/defaults_check")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(args.out)
    rows = []
    for s, r, k, seed in CASES[: args.max_cases]:
        task = ICRecallTask(KnowledgeBase.random(s, r, s, answer_overlap=1.0, seed=seed), n_pairs=k)
        model = build_model(task, seed=seed)
        start = evaluate(model, task, seed=seed)["accuracy"]
        t0 = time.perf_counter()
        finetune(model, task, seed=seed, progress=False)
        end = evaluate(model, task, seed=seed)["accuracy"]
        rows.append(dict(n_subjects=s, n_relations=r, n_pairs=k, seed=seed, start=start, end=end,
                         seconds=time.perf_counter() - t0))
        print(f"S={s:>3} R={r:>2} A={s:>3} k={k} seed={seed}: accuracy {start:.3f} -> {end:.3f} "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
    write_json(out / "defaults_check.json", rows)
    return 0 if all(row["end"] >= 0.95 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
