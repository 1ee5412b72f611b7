"""Benchmark: a real LM on TransformerLens 3.x (``HookedTransformer``) against 4.x (``TransformerBridge``).

Each line runs in its own interpreter (``.venv``: 3.x, ``.venv-tl4``: 4.x, both from ``make setup`` /
``make test-tl4``), loads the model through ``load_pretrained_lm`` (from the cache; a first 4.x load converts the
transformers model once, reported apart) and times, with :func:`timing.measure`: a forward of a batch of prompts,
``run_with_cache`` of every attention pattern, and ``run_with_hooks`` with one ``hook_z`` patch per layer.  The
logits of both lines are compared too (they must agree within 1e-4).  Example (the machine is shared)::

    flock /tmp/heavy.lock python benchmarks/bench_tl_lines.py --model smollm2-135m --batch 8 --repeats 5
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Greece: Athens\nItaly: Rome\nChina: Beijing\nFrance: Paris\nJapan:"


def worker(model_name: str, batch: int, repeats: int, out: Path) -> None:
    """Run in one line's interpreter: load, time, write the numbers and the logits."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from timing import measure

    from icr_interp.model.lm import cache as C
    from icr_interp.model.lm import load_pretrained_lm
    from icr_interp.tl import compat

    torch.set_num_threads(1)
    kind = "b" if compat.TL_LINE == 4 else "v"
    converted = C.find_cache(model_name, kind=kind) is None
    started = time.perf_counter()
    model = load_pretrained_lm(model_name)
    first = time.perf_counter() - started
    started = time.perf_counter()
    model = load_pretrained_lm(model_name)
    load = time.perf_counter() - started
    tokens = model.to_tokens([PROMPT] * batch)
    zero_z = [(f"blocks.{layer}.attn.hook_z", lambda z, hook: z * 0.5) for layer in range(model.cfg.n_layers)]
    with torch.no_grad():
        timings = measure({
            "forward": lambda: model(tokens),
            "run_with_cache(pattern)": lambda: model.run_with_cache(tokens, names_filter=lambda n: "hook_pattern" in n),
            "run_with_hooks(z x layers)": lambda: model.run_with_hooks(tokens, fwd_hooks=zero_z),
        }, repeats=repeats)
        logits = model(tokens[:1])[0, -1]
    out.write_text(json.dumps({
        "line": compat.TL_LINE, "version": compat.TL_VERSION, "class": type(model).__name__,
        "first_load_s": first, "first_load_converted": converted, "load_s": load,
        "timings": {k: {"best": v.best, "median": v.median} for k, v in timings.items()},
        "logits": logits.tolist()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.model, args.batch, args.repeats, Path(args.worker))
    results = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for venv in (".venv", ".venv-tl4"):
            python = ROOT / venv / "bin" / "python"
            if not python.is_file():
                sys.exit(f"error: {python} missing (make setup; make test-tl4)")
            out = Path(tmp) / f"{venv}.json"
            run = subprocess.run([str(python), __file__, "--model", args.model, "--batch", str(args.batch),
                                  "--repeats", str(args.repeats), "--worker", str(out)], cwd=ROOT, env=env)
            if run.returncode:
                sys.exit(f"error: the {venv} run failed ({run.returncode})")
            results[venv] = json.loads(out.read_text())
    three, four = results[".venv"], results[".venv-tl4"]
    import torch

    diff = float((torch.tensor(three["logits"]) - torch.tensor(four["logits"])).abs().max())
    print(f"{args.model}, batch {args.batch} x {len(PROMPT)} characters, best of {args.repeats} (median):")
    for r in (three, four):
        first = f"{r['first_load_s']:.1f} s ({'converted' if r['first_load_converted'] else 'cached'})"
        print(f"  TL {r['version']} {r['class']}: load {r['load_s']:.1f} s; first load {first}")
    for name in three["timings"]:
        a, b = three["timings"][name], four["timings"][name]
        print(f"  {name:28s} 3.x {a['best'] * 1e3:8.1f} ms ({a['median'] * 1e3:.1f})   "
              f"4.x {b['best'] * 1e3:8.1f} ms ({b['median'] * 1e3:.1f})   4.x/3.x {b['best'] / a['best']:.2f}")
    print(f"  max |logit 3.x - logit 4.x| at the last position: {diff:.2e}")


if __name__ == "__main__":
    main()
