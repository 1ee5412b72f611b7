"""Benchmark: the training step's cost, from matmul peak to the fast query-only path.

One run measures, and prints as numbers and ratios:

1. **peak** -- this machine's fp32 ``torch.mm`` throughput on large square
   matrices with torch's default thread count (best of several);
2. **memory** -- one training step's memory work at the query positions
   (batch x 1 x d_model in, forward + backward w.r.t. the input, weights
   frozen as in fine-tuning) at ``--n-triplets`` stored facts: the dense
   ``AssociativeMemory`` (eight batch x d_model x n_neurons matmuls, FLOPs
   counted from the shapes; tests/model/test_memory.py checks the count against
   ``FlopCounterMode``) as a fraction of the peak, and the ``FactoredMemory``
   (far fewer FLOPs) with its speed-up over dense;
3. **training step** -- ``batch_logits(fast=True)`` + cross-entropy + backward
   + AdamW on the attention's query/key weights against the same step with
   the full ``HookedTransformer`` forward (``fast=False``), at
   ``--n-triplets`` (default memory implementation) and at the reference size
   (64 subjects x 8 relations).

Correctness (factored == dense outputs and input gradients, fast == full loss
and gradients) is tested in tests/model/test_memory.py, not here: this only measures.

Timings on a shared 2-core machine are noisy: each is repeated with the
shared helper ``benchmarks/timing.py`` (best and median, taking turns); the peak is timed
alone and again taking turns with the memories, keeping the higher.  About 2-3 minutes with the defaults;
``--quick`` (10^4 facts, smaller peak matrices) runs in well under a minute.
"""

import argparse
import os
import sys
import time
from typing import Callable

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from icr_interp import ICRecallTask, KnowledgeBase, build_model  # noqa: E402
from icr_interp.model.memory import MemoryScales, construct_memory  # noqa: E402
from icr_interp.training.trainer import TrainConfig, batch_logits, trainable_names  # noqa: E402
from timing import measure  # noqa: E402

REFERENCE_KB = (64, 8, 64)  # subjects, relations, answers of the paper-sized reference


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-triplets", type=int, default=100_000, help="stored facts (subjects = answers = N / relations)")
    p.add_argument("--relations", type=int, default=8)
    p.add_argument("--n-pairs", type=int, default=4, help="context pairs k (prompt length 2k + 2)")
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64, help="prompts per training step")
    p.add_argument("--peak-size", type=int, default=4096, help="side of the square matrices timing the peak")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats of each measurement")
    p.add_argument("--quick", action="store_true", help="smoke run: 10^4 facts, 2048 peak matrices, 3 repeats")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.n_triplets, args.peak_size, args.repeats = 10_000, 2048, 3
    return args


# ---------------------------------------------------------------- 1. peak
def square_matmul(n: int) -> tuple[Callable[[], torch.Tensor], int]:
    """An n x n x n fp32 ``torch.mm`` and its FLOPs (2 n^3)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    return (lambda: torch.mm(a, b)), 2 * n**3


def read_bandwidth(n_bytes: int = 2**29, repeats: int = 5) -> float:
    """Best GB/s of one streaming read (a sum) over an ``n_bytes`` fp32 tensor: the roofline's other side."""
    x = torch.ones(n_bytes // 4)
    t = measure(dict(read=x.sum), repeats)["read"]
    return n_bytes / t.best / 1e9


# ---------------------------------------------------------------- 2. memory
def query_inputs(model, batch) -> torch.Tensor:
    """The memory's real input at each example's query: ``resid_mid`` there, as [batch 1 d_model]."""
    with torch.no_grad():
        _, cache = model.run_with_cache(batch.tokens, names_filter="blocks.0.hook_resid_mid")
    rows = torch.arange(len(batch))
    return cache["blocks.0.hook_resid_mid"][rows, batch.layout.query_end][:, None, :].clone()


def memory_step(memory: torch.nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Forward + backward w.r.t. the input, as in a fine-tuning step (the memory's weights are frozen)."""
    x = x.detach().requires_grad_(True)

    def step() -> torch.Tensor:
        x.grad = None
        out = memory(x)
        out.backward(grad_out)
        return out

    step.x = x
    return step


def counted_flops(fn: Callable[[], object]) -> int:
    """Matmul FLOPs of one call, as torch's ``FlopCounterMode`` counts them from the shapes."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def dense_flops(memory, batch: int) -> int:
    """Eight matmuls per step, each 2 * batch * d_model * width: four forward (x @ W_rel_in, @ W_rel_out,
    @ W_in, @ W_out), four backward (the same weights transposed; no weight gradients)."""
    d_model, n_rel = memory.W_rel_in.shape
    n_neurons = memory.W_in.shape[1]
    return 2 * 4 * batch * d_model * (n_rel + n_neurons)


@torch.no_grad()
def active_neurons(memory, x: torch.Tensor) -> tuple[float, float]:
    """Mean firing stage-I and stage-II neurons per input (the dense matmuls do the same work regardless)."""
    stage_1 = (x @ memory.W_rel_in + memory.b_rel_in > 0).sum(-1).float().mean().item()
    stage_2 = ((x + memory.infer_relation(x)) @ memory.W_in + memory.b_in > 0).sum(-1).float().mean().item()
    return stage_1, stage_2


def bench_memory(model, task, batch, repeats: int, peak_size: int) -> dict:
    """Dense vs factored memory on the same query inputs (their equality: tests/model/test_memory.py).

    The peak matmul takes turns with the two memories, so all three see the same load.
    """
    cfg = model.icr_config
    built = dict(construction=cfg.construction, kb=task.kb, vocab=task.vocab, basis=model.basis,
                 n_pairs=task.n_pairs, scales=MemoryScales(**cfg.scales))
    dense = construct_memory(**built, impl="dense").requires_grad_(False)  # frozen, as in fine-tuning
    factored = construct_memory(**built, impl="factored")
    x = query_inputs(model, batch)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    steps = dict(dense=memory_step(dense, x, grad_out), factored=memory_step(factored, x, grad_out))
    out_scale = dense(x).abs().max().item()
    flops = dict(dense=dense_flops(dense, len(batch)), factored=counted_flops(steps["factored"]))
    peak_mm, peak_flops = square_matmul(peak_size)
    times = measure(dict(**steps, peak=peak_mm), repeats)
    weight_bytes = sum(p.numel() * p.element_size() for p in dense.parameters())
    active = active_neurons(dense, x)
    peak = peak_flops / times.pop("peak").best / 1e9
    return dict(flops=flops, times=times, peak=peak, weight_bytes=weight_bytes,
                n_neurons=(dense.W_rel_in.shape[1], dense.W_in.shape[1]), out_scale=out_scale, active=active)


# ---------------------------------------------------------------- 3. training step
def train_step(model, batch, fast: bool, opt: torch.optim.Optimizer) -> Callable[[], torch.Tensor]:
    """One fine-tuning step exactly as ``finetune`` runs it (fast or full forward)."""

    def step() -> torch.Tensor:
        loss = F.cross_entropy(batch_logits(model, batch, fast=fast), batch.answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return step


def bench_training(model, task, batch_size: int, repeats: int, seed: int) -> dict:
    """Fast vs full training step on one model, taking turns; each path has its own AdamW (same settings)."""
    batch = task.sample(batch_size, seed=seed + 1)
    names = set(trainable_names(model))
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)  # as finetune freezes for its run
    tc = TrainConfig()

    def adamw() -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                                 weight_decay=tc.weight_decay)

    times = measure(dict(fast=train_step(model, batch, True, adamw()), full=train_step(model, batch, False, adamw())),
                    repeats)
    impl = type(model.blocks[-1].mlp).__name__
    return dict(times=times, impl=impl, d_model=model.cfg.d_model, n_triplets=task.kb.n_triplets)


# ---------------------------------------------------------------- report
def main() -> None:
    args = parse_args()
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} threads (default), {os.cpu_count()} cpus, "
          f"{args.repeats} timed repeats per measurement", flush=True)

    peak_mm, peak_flops = square_matmul(args.peak_size)
    t_peak = measure(dict(peak=peak_mm), args.repeats)["peak"]
    peak = peak_flops / t_peak.best / 1e9
    bandwidth = read_bandwidth()
    print(f"\n[1] fp32 peak: torch.mm {args.peak_size}^3: {peak:.1f} GFLOP/s ({t_peak}); "
          f"streaming read {bandwidth:.1f} GB/s", flush=True)

    n_subjects = args.n_triplets // args.relations
    kb = KnowledgeBase.random(n_subjects, args.relations, n_subjects, 1.0, seed=args.seed)
    task = ICRecallTask(kb, n_pairs=args.n_pairs)
    model = build_model(task, d_model=args.d_model, seed=args.seed)  # memory_impl="auto"
    batch = task.sample(args.batch, seed=args.seed + 1)
    mem = bench_memory(model, task, batch, args.repeats, args.peak_size)
    # Other jobs share the cores: keep the higher of the two peaks (alone, and taking
    # turns with the memories), so "% of peak" is never flattered by a slow peak.
    print(f"\n    peak re-measured taking turns with the memories: {mem['peak']:.1f} GFLOP/s; using the higher")
    peak = max(peak, mem["peak"])
    gflops = {k: mem["flops"][k] / mem["times"][k].best / 1e9 for k in mem["flops"]}
    dense_s = mem["times"]["dense"].best
    print(f"\n[2] memory at the query, {kb.n_triplets} triplets, d_model {args.d_model}, batch {args.batch} "
          f"(forward + backward w.r.t. the input)")
    print(f"  dense    : {mem['flops']['dense'] / 1e9:8.2f} GFLOP, {mem['times']['dense']}, "
          f"{gflops['dense']:.1f} GFLOP/s = {100 * gflops['dense'] / peak:.0f}% of peak; "
          f"weights {mem['weight_bytes'] / 1e9:.2f} GB read twice -> "
          f"{2 * mem['weight_bytes'] / dense_s / 1e9:.1f} GB/s")
    print(f"  factored : {mem['flops']['factored'] / 1e9:8.2f} GFLOP, {mem['times']['factored']}, "
          f"{gflops['factored']:.1f} GFLOP/s; speed-up over dense "
          f"{dense_s / mem['times']['factored'].best:.1f}x ({mem['flops']['dense'] / mem['flops']['factored']:.0f}x "
          f"fewer FLOPs)")
    print(f"  output scale {mem['out_scale']:.3g}")
    print(f"  firing neurons per query: stage I {mem['active'][0]:.0f} of {mem['n_neurons'][0]}, "
          f"stage II {mem['active'][1]:.0f} of {mem['n_neurons'][1]}", flush=True)

    big = bench_training(model, task, args.batch, args.repeats, args.seed)
    del model
    ref_kb = KnowledgeBase.random(*REFERENCE_KB, 1.0, seed=args.seed)
    ref_task = ICRecallTask(ref_kb, n_pairs=args.n_pairs)
    ref = bench_training(build_model(ref_task, seed=args.seed), ref_task, args.batch, 10 * args.repeats, args.seed)
    print("\n[3] training step (logits + cross-entropy + backward + AdamW on W_Q/W_K/b_Q/b_K)")
    for row in (big, ref):
        t = row["times"]
        print(f"  {row['n_triplets']:6d} triplets, d_model {row['d_model']}, {row['impl']}: fast {t['fast']}; "
              f"full {t['full']}; speed-up {t['full'].best / t['fast'].best:.1f}x", flush=True)

    summary(peak, gflops, mem, big, ref)
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f}s")


def summary(peak: float, gflops: dict, mem: dict, big: dict, ref: dict) -> None:
    """The final table: every headline number and ratio (best-of-repeats times)."""
    t = mem["times"]
    rows = [
        ("fp32 matmul peak (torch.mm)", f"{peak:.1f} GFLOP/s"),
        (f"dense memory, N={big['n_triplets']}", f"{gflops['dense']:.1f} GFLOP/s = {100 * gflops['dense'] / peak:.0f}%"
                                                f" of peak (goal >= 40%)"),
        ("dense memory step time", f"{t['dense'].best * 1e3:.1f} ms ({mem['flops']['dense'] / 1e9:.1f} GFLOP)"),
        ("factored memory step time",
         f"{t['factored'].best * 1e3:.1f} ms ({mem['flops']['factored'] / 1e9:.2f} GFLOP)"),
        ("factored vs dense speed-up", f"{t['dense'].best / t['factored'].best:.1f}x"),
    ]
    for row in (big, ref):
        tt = row["times"]
        rows.append((f"fast vs full step, N={row['n_triplets']} ({row['impl']})",
                     f"{tt['full'].best / tt['fast'].best:.1f}x ({tt['full'].best * 1e3:.1f} -> "
                     f"{tt['fast'].best * 1e3:.1f} ms)"))
    width = max(len(r[0]) for r in rows)
    print("\n" + "=" * (width + 50))
    print("SUMMARY")
    for name, value in rows:
        print(f"{name:{width}s}  {value}")
    print("=" * (width + 50))


if __name__ == "__main__":
    main()
