"""The patching engine on SmolLM2-135M: three comparisons, each in one run, each printing its ratio.

1. ``by_role``: :func:`patch_by_role` with the engine's cheapest strategies against the same call forced onto
   the general hooked forward (``strategy="general"``: the engine of the previous release), same patches,
   values compared (target >= 5x, equal within 1e-5).
2. ``heads``: per-head patching at every position (``get_act_patch_attn_head_out_by_pos``) against
   TransformerLens's own function on the *same cells* (``--head-layers``: every head and position of those
   layers; TransformerLens runs them through its ``generic_activation_patch`` with an ``index_df`` of exactly
   those cells, one forward each): no extrapolation (target >= 10x).
3. ``floor``: the default first grid (residual stream per layer x role) by the engine, against its floor
   (:func:`recompute_floor`: recomputed token-blocks x measured time per token-block; target <= 3x).

    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_engine.py               # all three
    flock /tmp/heavy.lock .venv/bin/python benchmarks/bench_engine.py --parts heads --head-layers 5 20
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _load(args):
    import torch

    torch.set_num_threads(args.threads)
    from icr_interp.model.pretrained_lm import load_pretrained_lm
    from icr_interp.task.knowledge import KnowledgeBase
    from icr_interp.task.text import TextICRecallTask

    model = _random_like(args.model) if args.random_weights else load_pretrained_lm(args.model)
    task = TextICRecallTask(KnowledgeBase.builtin("countries"), model.tokenizer, n_pairs=args.k)
    return model, task


def _random_like(name: str):
    """The model's architecture and tokenizer with random weights (a timing proxy that loads no LM weights)."""
    import json

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    from icr_interp.model import pretrained_lm

    cache = pretrained_lm.find_cache(name)
    cfg = json.loads((cache / "meta.json").read_text())["cfg"]
    cfg.update(n_ctx=256, seed=0)
    model = HookedTransformer(HookedTransformerConfig(**cfg))
    model.set_tokenizer(AutoTokenizer.from_pretrained(cache / "tokenizer"))
    return model.eval()


def _load_line() -> str:
    return f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} on {os.cpu_count()} cores"


def part_by_role(model, task, args) -> None:
    import torch
    import warnings

    from icr_interp.analysis.causal import patching as P
    from icr_interp.model import hooks as H

    pairs = task.sample_pairs(args.n_prompts, args.corruption, seed=args.seed)
    # the default role hooks (resid_pre, every head's z, attn_out, mlp_out) at a spread of layers
    hooks = [H.hook(layer, site) for layer in args.role_layers for site in ("resid_pre", "z", "attn_out", "mlp_out")]
    calls = {}
    for name, strategy in (("engine", None), ("general", "general")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            start, cpu = time.perf_counter(), time.process_time()
            calls[name] = (P.patch_by_role(model, pairs.clean, pairs.corrupted, hooks=hooks, strategy=strategy),
                           time.perf_counter() - start, time.process_time() - cpu)
    (ours, t_ours, c_ours), (ref, t_ref, c_ref) = calls["engine"], calls["general"]
    diff = float((ours.raw - ref.raw).abs().max())
    diff_norm = float((ours.values - ref.values).abs().max())
    print(f"[by_role] {len(pairs.clean)} prompts ({args.corruption} swap, k={args.k}), {len(ours.components)} rows "
          f"x {len(ours.roles)} roles = {ours.raw.numel()} patches; hooks at layers {args.role_layers}")
    print(f"  general hooked forward: {t_ref:8.2f} s wall ({c_ref:.2f} s CPU)")
    print(f"  engine (cheapest):      {t_ours:8.2f} s wall ({c_ours:.2f} s CPU)")
    print(f"  ratio {t_ref / t_ours:.1f}x (target >= 5x); max |difference| normalised {diff_norm:.2e} "
          f"(target <= 1e-5), raw logit difference {diff:.2e} (raw scale {abs(ours.clean_value):.2f}); {_load_line()}")
    assert torch.isfinite(ours.raw).all()


def part_heads(model, task, args) -> None:
    import pandas as pd
    import torch
    import transformer_lens.patching as TLP

    from icr_interp.analysis.causal import patching as P
    from icr_interp.analysis.causal.patching.metrics import LogitDiff

    pairs = task.sample_pairs(args.head_prompts, args.corruption, seed=args.seed)
    clean, corrupted = pairs.clean, pairs.corrupted
    _, cache = model.run_with_cache(clean.tokens)
    metric = LogitDiff(clean.answers, corrupted.answers, clean.layout.pred_pos)
    n_pos, n_heads = corrupted.tokens.shape[1], model.cfg.n_heads
    cells = [(layer, pos, h) for layer in args.head_layers for pos in range(n_pos) for h in range(n_heads)]
    index_df = pd.DataFrame(cells, columns=["layer", "pos", "head_index"])
    start, cpu = time.perf_counter(), time.process_time()
    ours = P.get_act_patch_attn_head_out_by_pos(model, corrupted.tokens, cache, metric, layers=args.head_layers)
    t_ours, c_ours = time.perf_counter() - start, time.process_time() - cpu
    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():
        ref = TLP.generic_activation_patch(model, corrupted.tokens, cache, metric,
                                           TLP.layer_pos_head_vector_patch_setter, "z", index_df=index_df)
    t_tl, c_tl = time.perf_counter() - start, time.process_time() - cpu
    mine = torch.stack([ours[layer, pos, h] for layer, pos, h in cells])
    diff = float((mine - ref.to(mine)).abs().max())
    print(f"[heads] {len(clean)} prompts x {n_pos} tokens, layers {args.head_layers}: {len(cells)} cells "
          f"(every head and position), the same cells on both sides")
    print(f"  TransformerLens get_act_patch_attn_head_out_by_pos cells: {t_tl:8.2f} s wall ({c_tl:.2f} s CPU)")
    print(f"  engine:                                                   {t_ours:8.2f} s wall ({c_ours:.2f} s CPU)")
    print(f"  ratio {t_tl / t_ours:.1f}x (target >= 10x); max |difference| {diff:.2e}; {_load_line()}")


def part_floor(model, task, args) -> None:
    import warnings

    from icr_interp.analysis.causal import patching as P
    from icr_interp.analysis.causal.patching.by_role import components, grid_masks, role_patch, setup
    from icr_interp.model import hooks as H

    pairs = task.sample_pairs(args.n_prompts, args.corruption, seed=args.seed)
    hooks = [H.hook(layer, "resid_pre") for layer in range(model.cfg.n_layers)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        s = setup(model, pairs.clean, pairs.corrupted, None, hooks, False)
    masks, query = grid_masks(s, None)
    patches = [role_patch(hook, head, m, query) for _, hook, head in components(model, hooks) for m in masks.values()]
    floor = P.recompute_floor(model, s.base.tokens, s.source_cache, patches, s.metric, base_run=s.run)
    start, cpu = time.perf_counter(), time.process_time()
    P.patch_activations(model, s.base.tokens, s.source_cache, patches, s.metric, base_run=s.run)
    actual, c_actual = time.perf_counter() - start, time.process_time() - cpu
    print(f"[floor] residual stream x role grid: {len(patches)} patches on {len(pairs.clean)} prompts "
          f"({args.corruption} swap)")
    print(f"  {floor}")
    print(f"  actual {actual:.3f} s wall ({c_actual:.2f} s CPU); actual / floor = {actual / floor.seconds:.2f} "
          f"(target <= 3); {_load_line()}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--parts", nargs="+", default=["by_role", "heads", "floor"], choices=["by_role", "heads", "floor"])
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--corruption", default="relation", choices=["relation", "query"])
    ap.add_argument("--n-prompts", type=int, default=4)
    ap.add_argument("--role-layers", type=int, nargs="+", default=[2, 14, 26])
    ap.add_argument("--head-prompts", type=int, default=2)
    ap.add_argument("--head-layers", type=int, nargs="+", default=[5, 20])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--random-weights", action="store_true",
                    help="the model's shapes and tokenizer with random weights (timing proxy; values are not the LM's)")
    args = ap.parse_args(argv)
    print(f"start: {_load_line()}")
    model, task = _load(args)
    for part in args.parts:
        {"by_role": part_by_role, "heads": part_heads, "floor": part_floor}[part](model, task, args)


if __name__ == "__main__":
    main()
