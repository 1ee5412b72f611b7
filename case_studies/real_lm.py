"""Case study: does a real language model (SmolLM2-135M, Gemma-3-270M) do IC-recall through pairwise attention rows?

Runs :func:`icr_interp.experiments.real_lm.run_real_lm` (recall against k with its baselines, template scores
with the pairing null, patching by head, function-vector heads and their overlap, the causal template test,
a verdict) and writes ``results.json``, ``heads.png``, ``methods.png`` and ``recall.png`` into ``--out``.
It prints an estimated time (calibrated on one forward) first, a line per phase, and rewrites results.json
after each phase (a killed run keeps what finished); at the end the numbers with their 95% intervals.

    python case_studies/real_lm.py --out case_studies/results/real_lm        # SmolLM2: ~30 min on 2 cores
    python case_studies/real_lm.py --model gemma-3-270m --out case_studies/results/real_lm_gemma  # ~1.5-2 h
    python case_studies/real_lm.py --model gemma-3-270m --n-prompts 64 --phases causal \\
        --out case_studies/results/real_lm_gemma    # one phase into an existing run (a stopped run, a fix)
    python case_studies/real_lm.py --csv my_facts.csv --pair-template $'Q: {s}\\nA: {a}\\n' \\
        --query-template $'Q: {s}\\nA:' --out /tmp/real_lm_csv
"""

import argparse
import sys
import time


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="load_pretrained_lm name")
    kb = p.add_mutually_exclusive_group()
    kb.add_argument("--builtin", default=None, help="built-in knowledge base (default: countries)")
    kb.add_argument("--csv", default=None, help="a CSV of facts (subject,relation,answer)")
    p.add_argument("--k", type=int, default=4, help="context pairs in the analysed prompts")
    p.add_argument("--max-k", type=int, default=8, help="the recall curve runs k = 0..max-k")
    p.add_argument("--n-prompts", type=int, default=128, help="prompts per analysis (and per k of the recall curve)")
    p.add_argument("--pair-template", default="{s}: {a}\n")
    p.add_argument("--query-template", default="{s}:")
    p.add_argument("--top-n", type=int, default=10, help="heads compared across methods")
    p.add_argument("--top-causal", type=int, default=5, help="heads the causal template test overwrites")
    p.add_argument("--n-null", type=int, default=8, help="re-paired null templates of the causal test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", required=True, help="folder for results.json and the figures")
    p.add_argument("--phases", default=None, help="run only these phases (comma-separated: recall, templates, "
                   "patching, function_vectors, causal) into --out's results.json, keeping the others")
    args = p.parse_args(argv)
    if args.phases is not None:
        args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    if args.builtin is None and args.csv is None:
        args.builtin = "countries"
    return args


def main(argv=None) -> dict:
    args = parse(argv)
    import torch

    torch.set_num_threads(args.threads)
    from icr_interp.experiments.real_lm import RealLMConfig, check_phases, run_real_lm, summary
    from icr_interp.model.pretrained_lm import load_pretrained_lm

    if args.phases is not None:
        check_phases(args.phases)  # before the model loads
    start = time.perf_counter()
    model = load_pretrained_lm(args.model)
    print(f"[load] {args.model} in {time.perf_counter() - start:.1f} s", flush=True)
    cfg = RealLMConfig(model=args.model, builtin=args.builtin, csv=args.csv, k=args.k, n_prompts=args.n_prompts,
                       max_k=args.max_k, pair_template=args.pair_template, query_template=args.query_template,
                       seed=args.seed, top_n=args.top_n, top_causal=args.top_causal,
                       n_null=args.n_null)
    results = run_real_lm(model, cfg, args.out, progress=lambda m: print(m, flush=True), only=args.phases)
    print(summary(results) if "verdict" in results else f"phases {', '.join(args.phases)} written")
    print(f"[total] {time.perf_counter() - start:.1f} s with loading; wrote {args.out}/results.json")
    return results


if __name__ == "__main__":
    from icr_interp.plumbing import exit_process, run_main

    exit_process(run_main("real_lm.py", lambda: 0 if main() else 1))
