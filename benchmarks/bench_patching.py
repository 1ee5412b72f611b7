"""Benchmark: icr_interp.analysis.causal.patching vs transformer_lens.patching on a 10^4-triplet model.

Builds an IC-recall model storing >= 10^4 triplets (1250 subjects x 8
relations), a batch of prompts and their corruptions, then times each of the
five drop-in functions in both libraries in one run, checks that they agree
within 1e-4 and prints both times and the speed ratio -- for our functions
called cold (each runs its own base forward pass, the fair drop-in
comparison) and with one base run shared by all five (``base_run=``).

TransformerLens runs one forward pass per cell (140 passes for a 10-position
prompt), so it dominates the runtime: about two minutes on two CPU cores with
the defaults.  Run ``python benchmarks/bench_patching.py --help`` for options.
"""

import argparse
import time
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")  # TransformerLens's per-cell progress bars
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import transformer_lens.patching as tl_patching  # noqa: E402

import icr_interp.analysis.causal.patching as icr_patching  # noqa: E402
from timing import timed  # noqa: E402  (benchmarks/timing.py: the shared timing helper)
from icr_interp import ICRecallTask, KnowledgeBase, build_model  # noqa: E402

FUNCTIONS = ("get_act_patch_resid_pre", "get_act_patch_attn_out", "get_act_patch_mlp_out",
             "get_act_patch_attn_head_out_by_pos", "get_act_patch_attn_head_pattern_dest_src_pos")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--subjects", type=int, default=1250, help="subjects = answers; triplets = subjects x relations")
    p.add_argument("--relations", type=int, default=8)
    p.add_argument("--n-pairs", type=int, default=4, help="context pairs k (prompt length 2k + 2)")
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--corruption", choices=("relation", "query"), default="relation")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    kb = KnowledgeBase.random(args.subjects, args.relations, args.subjects, 1.0, seed=args.seed)
    task = ICRecallTask(kb, n_pairs=args.n_pairs)
    model = build_model(task, d_model=args.d_model, seed=args.seed)
    clean = task.sample(args.batch, seed=args.seed + 1)
    corrupted = task.corrupt(clean, args.corruption, seed=args.seed + 2)
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(clean.tokens)
        corrupted_logits = model(corrupted.tokens)
    metric = icr_patching.logit_diff_metric(clean.answers, corrupted.answers, clean.layout.query_end,
                                            clean_logits=clean_logits, corrupted_logits=corrupted_logits)
    print(f"model: {kb.n_triplets} triplets, d_model {model.cfg.d_model}, vocab {model.cfg.d_vocab}, "
          f"batch {args.batch}, {task.n_ctx} positions, {args.corruption} corruption, {args.threads} threads")
    icr_patching.get_act_patch_mlp_out(model, corrupted.tokens, clean_cache, metric)  # warm-up
    shared, t_base = timed(icr_patching.base_run, model, corrupted.tokens)
    print(f"  one shared base (corrupted) run: {t_base:.3f}s")
    rows = []
    for name in FUNCTIONS:
        ref, t_tl = timed(getattr(tl_patching, name), model, corrupted.tokens, clean_cache, metric)
        ours, t_ours = timed(getattr(icr_patching, name), model, corrupted.tokens, clean_cache, metric)
        start = time.perf_counter()
        warm = getattr(icr_patching, name)(model, corrupted.tokens, clean_cache, metric, base_run=shared)
        t_warm = time.perf_counter() - start
        err = max((ref - ours).abs().max().item(), (ref - warm).abs().max().item())
        rows.append((name, tuple(ref.shape), t_tl, t_ours, t_warm, err))
        print(f"  {name}: TL {t_tl:.2f}s, ours {t_ours:.3f}s (shared base run {t_warm:.3f}s), "
              f"max |diff| {err:.1e}", flush=True)
    report(rows, t_base)


def report(rows: list, t_base: float) -> None:
    """Table: TL time, ours per call (own base run), ours with one base run shared by all five."""
    print(f"\n{'function':46s} {'shape':>15s} {'TL s':>7s} {'ours s':>7s} {'ratio':>6s} "
          f"{'shared s':>8s} {'ratio':>6s} {'max|diff|':>9s}")
    for name, shape, t_tl, t_ours, t_warm, err in rows:
        print(f"{name:46s} {str(shape):>15s} {t_tl:7.2f} {t_ours:7.3f} {t_tl / t_ours:6.1f} "
              f"{t_warm:8.3f} {t_tl / t_warm:6.1f} {err:9.1e}")
    tl, ours, warm = (sum(r[i] for r in rows) for i in (2, 3, 4))
    warm += t_base
    print(f"{'total (shared: + one base run)':46s} {'':>15s} {tl:7.2f} {ours:7.3f} {tl / ours:6.1f} "
          f"{warm:8.3f} {tl / warm:6.1f}")
    worst = max(r[5] for r in rows)
    print(f"agreement within 1e-4: {'yes' if worst <= 1e-4 else 'NO'} (worst {worst:.1e})")
    if worst > 1e-4:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
