"""Benchmark: a two-layer fine-tune against a one-layer one on the same base (issue 21, item 6).

Fine-tunes the reference base (64 subjects x 8 relations, k = 4) for ``--steps`` steps at 1 x 1, 2 x 1, 1 x 2 and
2 x 2 (layers x heads), taking turns ``--repeats`` times, and prints the best time of each and its ratio to the
one-layer model with as many heads.  The goal is at most 2x.  Since the two-layer path runs the last layer at the
query only and the first block from token tables (icr_interp.model.forward), that ratio measures what depth
itself costs; tests/model/test_layers_heads.py checks that the logits equal the full forward.
"""

import argparse
import time

import torch

from icr_interp import ICRecallTask, KnowledgeBase, build_model, finetune

SHAPES = ((1, 1), (2, 1), (1, 2), (2, 2))  # (layers, heads)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--n-samples", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    task = ICRecallTask(KnowledgeBase.random(64, 8, 64, answer_overlap=1.0, seed=0), n_pairs=4)
    times = {shape: [] for shape in SHAPES}
    for _ in range(args.repeats):
        for layers, heads in SHAPES:
            model = build_model(task, n_layers=layers, n_heads=heads, seed=0)
            start = time.perf_counter()
            finetune(model, task, steps=args.steps, n_samples=args.n_samples, seed=0, progress=False)
            times[(layers, heads)].append(time.perf_counter() - start)
    print(f"fine-tune of 64x8, k=4, {args.steps} steps, {args.n_samples} prompts, {args.threads} thread(s); "
          f"best of {args.repeats}")
    for layers, heads in SHAPES:
        best, one = min(times[(layers, heads)]), min(times[(1, heads)])
        print(f"  {layers} layer(s) x {heads} head(s): {best:6.2f} s   {best / one:4.2f}x the 1-layer time")


if __name__ == "__main__":
    main()
