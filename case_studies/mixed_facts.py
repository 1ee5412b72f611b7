"""Mixed knowledge bases: why fine-tuning the pair memory collapses to the BOS sink, and the mixed memory.

    python case_studies/mixed_facts.py --csv facts.csv --k 3 --memory pair mixed
    python case_studies/mixed_facts.py --overlap 0.25 --seed 1 --k 4 --memory pair mixed

A real-fact CSV (``KnowledgeBase.from_csv``) or a random base with partial answer
overlap (``KnowledgeBase.random(64, 8, 64, answer_overlap=...)``), one run per
memory: every ``--every`` steps of default fine-tuning, the attention mass on
BOS / subjects / answers at the query, the true and strongest wrong relation
coefficient, how many stage-I / stage-II neurons fire, the loss
(``icr_interp.model.memory.reads.query_readout``); held-out accuracy and the ceiling at
start and end (``evaluate``).  docs/results.md ("Mixed knowledge bases").
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, seed, setup_threads, write_json  # noqa: E402

from icr_interp import ICRecallTask, KnowledgeBase, build_model, evaluate, finetune  # noqa: E402
from icr_interp.model.memory.reads import query_readout  # noqa: E402

FIELDS = ("bos", "subjects", "answers", "rel_true", "rel_wrong", "stage1_firing", "stage2_firing", "loss", "accuracy")


def run_one(task: ICRecallTask, memory: str, seed_: int, steps: int, every: int) -> dict:
    model = build_model(task, memory=memory, seed=seed_)
    probe = task.sample(256, seed=seed_ + 123)
    trace = [dict(step=0, **query_readout(model, probe))]
    start = evaluate(model, task)

    def record(step, m, history):
        if (step + 1) % every == 0:
            trace.append(dict(step=step + 1, **query_readout(m, probe)))

    finetune(model, task, seed=seed_, steps=steps, callback=record, progress=False)
    end = evaluate(model, task)
    return dict(memory=model.icr_config.construction, start=start["accuracy"], end=end["accuracy"],
                ceiling=end["ceiling"], trace=trace)


def main(argv=None) -> int:
    p = Parser(prog="mixed_facts.py", description=__doc__.splitlines()[0])
    p.add_argument("--csv", help="a (subject, relation, answer) CSV; default: a random base with --overlap")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--kb", type=positive, nargs=3, default=[64, 8, 64], metavar=("S", "R", "A"))
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--k", type=positive, default=3)
    p.add_argument("--memory", nargs="+", default=["pair", "constructed"])
    p.add_argument("--steps", type=int, default=None, help="default: TrainConfig's")
    p.add_argument("--every", type=positive, default=25)
    p.add_argument("--threads", type=positive, default=1)
    p.add_argument("--out", default="case_studies/results/mixed_facts")
    args = p.parse_args(argv)
    if not 0 <= args.overlap <= 1:
        p.error("--overlap must lie in [0, 1]")
    setup_threads(args.threads)
    out = out_dir(p, args.out)
    try:
        kb = KnowledgeBase.from_csv(args.csv) if args.csv else KnowledgeBase.random(
            *args.kb, answer_overlap=args.overlap, seed=args.seed)
        task = ICRecallTask(kb, n_pairs=args.k)
    except (OSError, ValueError) as e:
        p.error(str(e))
    runs = [run_one(task, m, args.seed, args.steps, args.every) for m in args.memory]
    write_json(out / "summary.json", dict(args=vars(args), runs=runs))
    for r in runs:
        print(f"memory {r['memory']}: held-out accuracy {r['start']:.3f} -> {r['end']:.3f} (ceiling {r['ceiling']:.3f})")
        print("  step " + " ".join(f"{f:>13}" for f in FIELDS))
        for row in r["trace"]:
            print(f"  {row['step']:4d} " + " ".join(f"{row[f]:13.3f}" for f in FIELDS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
