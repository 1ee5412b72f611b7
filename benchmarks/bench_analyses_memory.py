"""Peak memory of the analyses at N = 10^6: evaluate and score_templates in bounded memory (issue 11).

Builds the 15,625 x 64 (10^6 facts) model with the memory ``auto`` picks (sparse),
then runs ``evaluate`` on 1,024 prompts, ``score_templates`` on 256 and role
patching (``patch_by_role``, default hooks: resid_pre, z, attn_out, mlp_out and the
memory's stage hooks, every role) under the relation swap and the query swap on
256 prompts, printing each one's time and the process's peak RSS as a fraction
of the 6 GB bound.

    .venv/bin/python benchmarks/bench_analyses_memory.py --threads 2
"""

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timing import peak_rss_gb as peak_gb, timed  # noqa: E402  (benchmarks/timing.py: the shared helper)

BOUND_GB = 6.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (set explicitly)")
    p.add_argument("--subjects", type=int, default=15_625)
    p.add_argument("--relations", type=int, default=64)
    p.add_argument("--patch-prompts", type=int, default=256, help="prompts per role-patching run (0: skip)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import icr_interp as ii

    kb = ii.KnowledgeBase.random(args.subjects, args.relations, args.subjects, answer_overlap=1.0, seed=0)
    task = ii.ICRecallTask(kb, n_pairs=4)
    model, seconds = timed(ii.build_model, task, d_model=1024, seed=0)
    print(f"N={kb.n_triplets}: build {seconds:.1f} s, memory {model.icr_config.memory_impl}, "
          f"peak RSS {peak_gb():.2f} GB")
    out, seconds = timed(ii.evaluate, model, task, n_prompts=1024)
    print(f"evaluate(1024 prompts): {seconds:.1f} s, accuracy {out['accuracy']:.3f}, "
          f"peak RSS {peak_gb():.2f} GB = {peak_gb() / BOUND_GB:.2f} x the {BOUND_GB:g} GB bound")
    _, seconds = timed(ii.score_templates, model, task.sample(256, seed=1))
    print(f"score_templates(256 prompts): {seconds:.1f} s, "
          f"peak RSS {peak_gb():.2f} GB = {peak_gb() / BOUND_GB:.2f} x the {BOUND_GB:g} GB bound")
    for kind in ("relation", "query") if args.patch_prompts else ():
        pairs = task.corrupt_pairs(task.sample(args.patch_prompts, seed=2), kind, seed=3)
        res, seconds = timed(ii.patching.patch_by_role, model, pairs.clean, pairs.corrupted)
        cells = f"{len(res.components)} x {len(res.roles)} cells"
        print(f"patch_by_role({kind} swap, {len(pairs.clean)} prompts, {cells}): {seconds:.1f} s, "
              f"reliable {res.reliable}, peak RSS {peak_gb():.2f} GB = {peak_gb() / BOUND_GB:.2f} x the "
              f"{BOUND_GB:g} GB bound")


if __name__ == "__main__":
    main()
