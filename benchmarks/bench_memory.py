"""Benchmark: the sparse memory against the factored and dense ones, from 10^4 to 10^6 facts.

One run measures, and prints as numbers and ratios:

1. **peak** -- this machine's fp32 ``torch.mm`` throughput at the benchmark's
   thread count (``--threads``, default 2);
2. **fine-tuning step** at N ~ 10^4, 10^5, 10^6 triplets (``n`` subjects x 64
   relations x ``n`` answers, bijective shared answers, ``mapping="balanced"``;
   k = 4, batch 64, d_model 1024, one layer, the query-only path
   ``batch_logits(fast=True)`` + cross-entropy + backward + AdamW on W_Q/W_K)
   for each memory implementation (dense only where its weights fit
   ``--dense-max-gb``): time per step, speed-ups, the process's peak RSS, and
   the memory alone (forward + backward at the 64 query rows) in GFLOP/s as a
   fraction of the peak;
3. **evaluate** at the largest N with the sparse memory: ``train.evaluate``
   (full forward at every position, caching only ``hook_pattern``) on
   ``--eval-prompts`` prompts, its time and the process's peak RSS;
4. **crossover** -- the memory alone at small N (the rule of
   ``memory.choose_impl``).

Every (N, implementation) runs in its own spawned process, so each peak RSS
belongs to one configuration.  Correctness (sparse == factored == dense) is
tested in tests/model/test_memory_sparse.py, not here.  About 4-5 minutes on two
cores with the defaults; ``--quick`` (10^4 and 10^5 only) about one.
"""

import argparse
import multiprocessing as mp
import os
import sys
import time

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from timing import measure, peak_rss_gb, ratio, timed  # noqa: E402

IMPLS = ("sparse", "factored", "dense")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10**4, 10**5, 10**6], help="target triplet counts")
    p.add_argument("--relations", type=int, default=64)
    p.add_argument("--n-pairs", type=int, default=4)
    p.add_argument("--d-model", type=int, default=1024)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="torch threads (set explicitly in every process)")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per configuration (factored at 10^6: 3)")
    p.add_argument("--dense-max-gb", type=float, default=4.0, help="skip the dense memory above this weight size")
    p.add_argument("--eval-prompts", type=int, default=256)
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--quick", action="store_true", help="10^4 and 10^5 only, no evaluate, 3 repeats")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.quick:
        args.sizes, args.repeats, args.eval_prompts = [10**4, 10**5], 3, 0
    return args


def make_task(n_triplets: int, relations: int, n_pairs: int, seed: int):
    from icr_interp import ICRecallTask, KnowledgeBase

    n = max(1, round(n_triplets / relations))
    kb = KnowledgeBase.random(n, relations, n, answer_overlap=1.0, seed=seed, mapping="balanced")
    return ICRecallTask(kb, n_pairs=n_pairs)


def build(task, impl: str, d_model: int, seed: int):
    """``build_model(memory_impl=impl)``; where build_model does not know ``impl`` yet, attach it by hand."""
    from icr_interp import build_model
    from icr_interp.model.memory import MemoryScales, construct_memory

    try:
        return build_model(task, d_model=d_model, seed=seed, memory_impl=impl)
    except ValueError:
        model = build_model(task, d_model=d_model, seed=seed, memory_impl="factored")
        cfg = model.icr_config
        model.blocks[-1].mlp = None  # free the factored buffers before building the sparse ones
        model.blocks[-1].mlp = construct_memory(cfg.construction, task.kb, task.vocab, model.basis, task.n_pairs,
                                                MemoryScales(**cfg.scales), impl=impl)
        model.setup()
        return model


def query_inputs(model, batch) -> torch.Tensor:
    """The memory's input at each query (``resid_mid`` there) as [batch 1 d_model]."""
    rows, qpos = torch.arange(len(batch)), batch.layout.query_end
    with torch.no_grad():
        resid = model.embed(batch.tokens) + model.pos_embed(batch.tokens)
        attn_out = model.blocks[0].attn(query_input=resid, key_input=resid, value_input=resid)[rows, qpos]
    return (resid[rows, qpos] + attn_out)[:, None, :]


def memory_step(memory, x: torch.Tensor, grad_out: torch.Tensor):
    """Forward + backward w.r.t. the input (frozen weights), as inside a fine-tuning step."""
    x = x.detach().requires_grad_(True)

    def step():
        x.grad = None
        memory(x).backward(grad_out)

    return step


def train_step(model, batch):
    from icr_interp.training.trainer import TrainConfig, batch_logits, trainable_names

    names = set(trainable_names(model))
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)  # as finetune freezes for its run
    tc = TrainConfig()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                            weight_decay=tc.weight_decay, foreach=True)  # as finetune's

    def step():
        loss = F.cross_entropy(batch_logits(model, batch, fast=True), batch.answers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run_config(job: dict) -> dict:
    """One (N, implementation) in a fresh process: build, time the step and the memory, peak RSS."""
    torch.set_num_threads(job["threads"])
    task = make_task(job["n"], job["relations"], job["n_pairs"], job["seed"])
    model, t_build = timed(build, task, job["impl"], job["d_model"], job["seed"])
    batch = task.sample(job["batch"], seed=job["seed"] + 1)
    x = query_inputs(model, batch)
    mem = memory_step(model.blocks[-1].mlp, x, torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
    with FlopCounterMode(display=False) as counter:
        mem()
    # The peak matmul takes turns with the step and the memory, so all three see the same load.
    peak_mm, peak_flops = square_matmul(job["peak_size"])
    times = measure(dict(step=train_step(model, batch), memory=mem, peak=peak_mm), job["repeats"])
    out = dict(n=task.kb.n_triplets, impl=job["impl"], cls=type(model.blocks[-1].mlp).__name__, build=t_build,
               step=times["step"], memory=times["memory"], flops=counter.get_total_flops(),
               peak=peak_flops / times["peak"].best / 1e9)
    if job.get("eval_prompts"):
        from icr_interp.training.trainer import evaluate

        rss_before = peak_rss_gb()
        result, out["eval_time"] = timed(evaluate, model, task, n_prompts=job["eval_prompts"], seed=job["seed"])
        out.update(eval_accuracy=result["accuracy"], rss_before_eval=rss_before)
    out["rss"] = peak_rss_gb()
    return out


def in_child(job: dict) -> dict:
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(run_config, (job,))


def crossover(threads: int, d_models=(256, 1024), subjects=(16, 64, 256, 1024), repeats: int = 20) -> list[tuple]:
    """Memory alone (forward + backward at 64 query rows) per implementation at small N: choose_impl's rule."""
    torch.set_num_threads(threads)
    rows = []
    for d_model in d_models:
        for n in subjects:
            task = make_task(n * 8, 8, 4, 0)
            model = build(task, "factored", d_model, 0)
            cfg = model.icr_config
            from icr_interp.model.memory import MemoryScales, construct_memory

            x = query_inputs(model, task.sample(64, seed=1))
            g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            mems = {impl: construct_memory(cfg.construction, task.kb, task.vocab, model.basis, task.n_pairs,
                                           MemoryScales(**cfg.scales), impl=impl).requires_grad_(False)
                    for impl in IMPLS}
            t = measure({impl: memory_step(m, x, g) for impl, m in mems.items()}, repeats, warmup=3)
            rows.append((task.kb.n_triplets, d_model, {impl: t[impl].best for impl in IMPLS}))
    return rows


def square_matmul(size: int):
    """An fp32 ``size``^3 ``torch.mm`` and its FLOPs."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=gen), torch.randn(size, size, generator=gen)
    return (lambda: torch.mm(a, b)), 2 * size**3


def matmul_peak(size: int, threads: int, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    mm, flops = square_matmul(size)
    return flops / measure(dict(mm=mm), repeats)["mm"].best / 1e9


def main() -> None:
    args = parse_args()
    t0 = time.perf_counter()
    peak = matmul_peak(args.peak_size, args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads (set), {os.cpu_count()} cpus")
    print(f"[1] fp32 peak: torch.mm {args.peak_size}^3 = {peak:.1f} GFLOP/s\n", flush=True)
    print("[2] fine-tuning step (batch %d, k=%d, d_model %d, query-only path)" % (args.batch, args.n_pairs,
                                                                                args.d_model))
    results = {}
    for n in args.sizes:
        for impl in IMPLS:
            if impl == "dense" and 16 * n * args.d_model / 1e9 > args.dense_max_gb:
                print(f"  N~{n:>8d} dense   : skipped (weights ~{16 * n * args.d_model / 1e9:.0f} GB)")
                continue
            job = dict(n=n, impl=impl, relations=args.relations, n_pairs=args.n_pairs, d_model=args.d_model,
                       batch=args.batch, threads=args.threads, seed=args.seed, peak_size=args.peak_size,
                       repeats=3 if (impl == "factored" and n >= 10**6) else args.repeats,
                       eval_prompts=args.eval_prompts if (impl == "sparse" and n == max(args.sizes)) else 0)
            r = results[n, impl] = in_child(job)
            gflops = r["flops"] / r["memory"].best / 1e9
            print(f"  N={r['n']:>8d} {impl:8s} ({r['cls']}): step {r['step']}; memory {r['memory']}, "
                  f"{r['flops'] / 1e9:.2f} GFLOP (as FlopCounterMode counts: sparse products at full size) = "
                  f"{gflops:.1f} GFLOP/s ({100 * gflops / max(peak, r['peak']):.0f}% of the peak "
                  f"{max(peak, r['peak']):.1f}, the higher of alone and taking turns); "
                  f"build {r['build']:.1f} s; peak RSS {r['rss']:.2f} GB", flush=True)
            if "eval_time" in r:
                print(f"  N={r['n']:>8d} sparse evaluate({args.eval_prompts} prompts): {r['eval_time']:.1f} s, "
                      f"accuracy {r['eval_accuracy']:.3f}, peak RSS {r['rss_before_eval']:.2f} GB before -> "
                      f"{r['rss']:.2f} GB after", flush=True)
    print("\n[3] speed-ups of the sparse step (best times)")
    for n in args.sizes:
        s = results[n, "sparse"]
        line = f"  N={s['n']:>8d}: sparse {s['step'].best * 1e3:8.1f} ms"
        for other in ("factored", "dense"):
            if (n, other) in results:
                line += (f"; {ratio(results[n, other]['step'], s['step']):6.1f}x faster than {other} "
                         f"(memory alone {ratio(results[n, other]['memory'], s['memory']):.1f}x)")
        print(line)
    print("\n[4] crossover: memory alone, forward + backward at 64 query rows (best of 20, ms)")
    for n_facts, d_model, t in crossover(args.threads):
        fastest = min(t, key=t.get)
        print(f"  N={n_facts:6d} d_model={d_model:5d} (N*d = 2^{(n_facts * d_model).bit_length() - 1}): "
              + ", ".join(f"{impl} {1e3 * t[impl]:7.2f}" for impl in IMPLS) + f" -> {fastest}")
    print(f"\ntotal benchmark time {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
