"""IC-recall on every registered real LM, side by side: accuracy against k with both baselines, on a CSV and a
template of your choice (defaults: the hand-written tests/data/world_facts.csv and a template no test uses).

    python case_studies/two_models.py [--csv FILE] [--pair-template T] [--query-template T] [--k 0 1 3]
                                      [--n-prompts N] [--models NAME ...] [--threads N] [--out DIR]

Writes DIR/two_models.json and prints one table: a row per (model, k) with top-1 accuracy, its 95% interval and
the named-relation baseline (``icr_interp.recall_curve``; k = 0 is the zero-shot baseline).
"""

import argparse
import sys
from pathlib import Path

import _common as common

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=str(REPO / "tests" / "data" / "world_facts.csv"))
    p.add_argument("--pair-template", default="{s} -> {a}\n")
    p.add_argument("--query-template", default="{s} ->")
    p.add_argument("--k", type=int, nargs="+", default=[0, 1, 3])
    p.add_argument("--n-prompts", type=int, default=128)
    p.add_argument("--models", nargs="+", default=None, help="default: every registered model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="case_studies/results/two_models")
    args = p.parse_args(argv)
    common.setup_threads(args.threads)
    out = common.out_dir(p, args.out)

    import icr_interp as ii
    from icr_interp.experiments.text_probe import wilson

    kb = ii.KnowledgeBase.from_csv(args.csv)
    rows = []
    for name in args.models or ii.pretrained_lm_names():
        model = ii.load_pretrained_lm(name)
        task = ii.TextICRecallTask(kb, model, n_pairs=max(args.k), pair_template=args.pair_template,
                                   query_template=args.query_template)
        curve = ii.recall_curve(model, task, ks=args.k, n_prompts=args.n_prompts)
        named = None if curve.named is None else curve.named.accuracy
        for k in args.k:
            acc = curve.by_k[k].accuracy
            low, high = wilson(round(acc * args.n_prompts), args.n_prompts)
            rows.append(dict(model=name, k=k, accuracy=acc, ci=[low, high], named=named, n_prompts=args.n_prompts))
            print(f"{name:14s} k={k}  accuracy {acc:.3f} [{low:.3f}, {high:.3f}]  named relation "
                  f"{'-' if named is None else f'{named:.3f}'}", flush=True)
    common.write_json(out / "two_models.json", dict(csv=args.csv, pair_template=args.pair_template,
                                                    query_template=args.query_template, rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
