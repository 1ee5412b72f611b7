"""Per-head patching on SmolLM2-135M: the engine against TransformerLens, same prompts, sampled cells.

Superseded for the reported ratio by ``benchmarks/bench_engine.py --parts heads`` (the same cells on both sides,
no extrapolation); kept for the memory comparison (each side in its own process).

``transformer_lens.patching.get_act_patch_attn_head_out_by_pos`` runs one forward pass per (layer, position,
head) cell.  :func:`icr_interp.analysis.causal.patching.get_act_patch_attn_head_out_by_pos` runs every cell's
samples stacked, each through the blocks from its layer on and at the positions from its position on (the
metric, a logit difference at each prediction position, declares those rows: only they are unembedded).

A full grid takes TransformerLens hours on two cores, so both sides are timed on a subset and extrapolated
(printed as such): ours on ``--layers`` (all positions and heads; the default, layer 15, runs 15 of the 30
blocks after its patches, the grid's average being 15.5), TransformerLens on ``--tl-cells`` random cells of
those layers (its cost per cell is one forward pass whatever the cell).  Values are compared on those cells.
Each side runs in its own process, so each peak RSS (``resource.getrusage``) is its own.

    python benchmarks/bench_real_lm_patching.py                      # 4 prompts, k = 3, relation swap
    python benchmarks/bench_real_lm_patching.py --corruption query   # query swap: most positions unchanged
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _setup(args):
    import torch

    torch.set_num_threads(args.threads)
    from icr_interp.analysis.causal.patching.metrics import LogitDiff
    from icr_interp.model.pretrained_lm import load_pretrained_lm
    from icr_interp.task.knowledge import KnowledgeBase
    from icr_interp.task.text import TextICRecallTask

    model = load_pretrained_lm(args.model)
    task = TextICRecallTask(KnowledgeBase.builtin("countries"), model.tokenizer, n_pairs=args.k)
    pairs = task.sample_pairs(args.n_prompts, args.corruption, seed=args.seed)
    clean, corrupted = pairs.clean, pairs.corrupted
    names = {f"blocks.{layer}.attn.hook_z" for layer in range(model.cfg.n_layers)}
    _, cache = model.run_with_cache(clean.tokens, names_filter=lambda n: n in names)
    metric = LogitDiff(clean.answers, corrupted.answers, clean.layout.pred_pos)
    return model, clean, corrupted, cache, metric


def _cells(args, n_pos: int, n_heads: int):
    import torch

    gen = torch.Generator().manual_seed(args.seed)
    grid = [(layer, pos, h) for layer in args.layers for pos in range(n_pos) for h in range(n_heads)]
    return [grid[i] for i in torch.randperm(len(grid), generator=gen)[:args.tl_cells].tolist()]


def part_ours(args) -> dict:
    from icr_interp.analysis.causal import patching as S

    model, clean, corrupted, cache, metric = _setup(args)
    start, cpu = time.perf_counter(), time.process_time()
    out = S.get_act_patch_attn_head_out_by_pos(model, corrupted.tokens, cache, metric, layers=args.layers)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    cells = _cells(args, corrupted.tokens.shape[1], model.cfg.n_heads)
    return dict(seconds=seconds, cpu_seconds=cpu, n_cells=len(args.layers) * corrupted.tokens.shape[1] * model.cfg.n_heads,
                values=[float(out[c]) for c in cells], cells=cells, shape=list(corrupted.tokens.shape),
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                grid_cells=model.cfg.n_layers * corrupted.tokens.shape[1] * model.cfg.n_heads)


def part_tl(args) -> dict:
    import pandas as pd
    import transformer_lens.patching as TLP

    model, clean, corrupted, cache, metric = _setup(args)
    cells = _cells(args, corrupted.tokens.shape[1], model.cfg.n_heads)
    index = pd.DataFrame(cells, columns=["layer", "pos", "head"])
    import torch

    start, cpu = time.perf_counter(), time.process_time()
    with torch.no_grad():  # TransformerLens's best case (it does not turn autograd off itself)
        out = TLP.generic_activation_patch(model, corrupted.tokens, cache, lambda lg: metric(lg), activation_name="z",
                                           patch_setter=TLP.layer_pos_head_vector_patch_setter, index_df=index,
                                           index_axis_names=None)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return dict(seconds=seconds, cpu_seconds=cpu, n_cells=len(cells), values=[float(v) for v in out], cells=cells,
                peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n-prompts", type=int, default=4)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--corruption", default="relation", choices=("relation", "query"))
    p.add_argument("--layers", default="15", help="layers our side runs (all positions and heads)")
    p.add_argument("--tl-cells", type=int, default=9, help="random cells of those layers TransformerLens runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--part", choices=("ours", "tl"), help=argparse.SUPPRESS)
    p.add_argument("--json", default=None, help="write the summary here")
    args = p.parse_args(argv)
    args.layers = [int(x) for x in str(args.layers).split(",")]
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    if args.part:
        result = (part_ours if args.part == "ours" else part_tl)(args)
        print(json.dumps(result))
        return result
    runs = {}
    with tempfile.TemporaryDirectory():
        for part in ("ours", "tl"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part] + (argv or sys.argv[1:])
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            runs[part] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"[{part}] {runs[part]['n_cells']} cells in {runs[part]['seconds']:.1f} s "
                  f"({runs[part]['cpu_seconds']:.1f} s CPU), "
                  f"peak RSS {runs[part]['peak_rss_mb']:.0f} MB", flush=True)
    ours, tl = runs["ours"], runs["tl"]
    diff = max(abs(a - b) for a, b in zip(ours["values"], tl["values"]))
    per_cell_ours, per_cell_tl = ours["seconds"] / ours["n_cells"], tl["seconds"] / tl["n_cells"]
    cpu_ratio = (tl["cpu_seconds"] / tl["n_cells"]) / (ours["cpu_seconds"] / ours["n_cells"])
    summary = dict(cpu_ratio=cpu_ratio, ours_cpu_seconds=ours["cpu_seconds"], tl_cpu_seconds=tl["cpu_seconds"],
                   prompts=ours["shape"], corruption=args.corruption, layers=args.layers, grid_cells=ours["grid_cells"],
                   ours_seconds=ours["seconds"], ours_cells=ours["n_cells"], tl_seconds=tl["seconds"],
                   tl_cells=tl["n_cells"], ours_full_grid_s_extrapolated=per_cell_ours * ours["grid_cells"],
                   tl_full_grid_s_extrapolated=per_cell_tl * ours["grid_cells"], ratio=per_cell_tl / per_cell_ours,
                   max_abs_diff=diff, equal_within_1e_4=diff <= 1e-4, ours_peak_rss_mb=ours["peak_rss_mb"],
                   tl_peak_rss_mb=tl["peak_rss_mb"])
    print(f"prompts {ours['shape']} ({args.corruption} swap); grid {ours['grid_cells']} cells (layer x pos x head)")
    print(f"ours: {ours['n_cells']} cells (layers {args.layers}) in {ours['seconds']:.1f} s -> full grid "
          f"~{summary['ours_full_grid_s_extrapolated']:.0f} s (extrapolated)")
    print(f"TransformerLens: {tl['n_cells']} cells in {tl['seconds']:.1f} s -> full grid "
          f"~{summary['tl_full_grid_s_extrapolated']:.0f} s (extrapolated)")
    print(f"speed ratio {summary['ratio']:.1f}x wall clock, {cpu_ratio:.1f}x CPU time (per cell); max |ours - TL| on the TL cells {diff:.2e} "
          f"({'equal' if diff <= 1e-4 else 'NOT equal'} within 1e-4); peak RSS ours {ours['peak_rss_mb']:.0f} MB, "
          f"TL {tl['peak_rss_mb']:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
