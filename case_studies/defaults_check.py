"""Check that the default fine-tuning budget reaches >= 0.95 held-out accuracy beyond the reference size.

    python case_studies/defaults_check.py --out case_studies/results/defaults_check

Shared-answer knowledge bases of several sizes and numbers of pairs, each with
its own seed: ``RunConfig(seed=seed, knowledge=..., task=...)`` with every
other field at its default -- no argument tuned per case -- run by
``icr_interp.run``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, setup_threads, write_json  # noqa: E402

from icr_interp import run  # noqa: E402
from icr_interp.pipeline.config import EvalConfig, KnowledgeConfig, RunConfig, TaskConfig  # noqa: E402

CASES = [(32, 4, 2, 1), (128, 16, 6, 2), (32, 16, 6, 3), (128, 4, 2, 4), (64, 8, 3, 5), (96, 12, 5, 6), (32, 4, 6, 7)]


def case_config(n_subjects: int, n_relations: int, n_pairs: int, seed: int) -> RunConfig:
    """Defaults everywhere but the knowledge base, the number of pairs and the seed (no template scoring)."""
    return RunConfig(name="defaults_check", seed=seed,
                     knowledge=KnowledgeConfig(n_subjects, n_relations, n_subjects, answer_overlap=1.0),
                     task=TaskConfig(n_pairs=n_pairs), eval=EvalConfig(n_template=0))


def main(argv=None) -> int:
    p = Parser(prog="defaults_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=positive, default=None)
    p.add_argument("--max-cases", type=positive, default=len(CASES), help="run only the first N cases (smoke test)")
    p.add_argument("--out", default="case_studies/results/defaults_check")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(p, args.out)
    rows = []
    for s, r, k, seed in CASES[: args.max_cases]:
        m = run(case_config(s, r, k, seed)).metrics
        rows.append(dict(n_subjects=s, n_relations=r, n_pairs=k, seed=seed, start=m["start_accuracy"],
                         end=m["accuracy"], seconds=m["seconds"]))
        print(f"S={s:>3} R={r:>2} A={s:>3} k={k} seed={seed}: accuracy {m['start_accuracy']:.3f} -> "
              f"{m['accuracy']:.3f} ({m['seconds']:.0f} s)", flush=True)
    write_json(out / "defaults_check.json", rows)
    return 0 if all(row["end"] >= 0.95 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
