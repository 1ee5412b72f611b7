"""Rerun the case study's patching and function-vector phases (same task, seeds and calls as run_real_lm) on
N prompts after the suffix fix, replacing them in results.json (the earlier ones kept beside).

    flock /tmp/heavy.lock .venv/bin/python -u rerun_phases.py gemma-3-270m case_studies/results/real_lm_gemma N
"""
import json, os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
from icr_interp.experiments.real_lm import RealLMConfig, phase_patching, phase_function_vectors, overlap
from icr_interp.model.pretrained_lm import load_pretrained_lm
from icr_interp.task.text import TextICRecallTask

name, out, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
t0 = time.time()
model = load_pretrained_lm(name)
results = json.loads((out / "results.json").read_text())
cfg = RealLMConfig(**{**results["config"], "n_prompts": n})
task = TextICRecallTask(cfg.knowledge_base(), model, cfg.k, cfg.pair_template, cfg.query_template)
print(f"load {time.time() - t0:.1f} s", flush=True)
for key, fn in (("patching", lambda: phase_patching(model, task, cfg, print)),
                ("function_vectors", lambda: phase_function_vectors(model, task, cfg))):
    t1 = time.time()
    results[key] = fn()
    results["timings"][key] = round(time.time() - t1, 1)
    results.setdefault("rerun", {})[key] = dict(n_prompts=n, seconds=results["timings"][key],
        why="rerun after the suffix-strategy fix (QK-normed past keys); by /work/brief/out/h26/rerun_phases.py")
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"{key} {results['timings'][key]} s", flush=True)
n_total = model.cfg.n_layers * model.cfg.n_heads
tops = dict(function_vectors=[tuple(h) for h in results["function_vectors"]["top"][:cfg.top_n]],
            relation=[tuple(h) for h in results["patching"]["relation"]["top"][:cfg.top_n]],
            query=[tuple(h) for h in results["patching"]["query"]["top"][:cfg.top_n]],
            pairwise=[(r["layer"], r["head"]) for r in results["templates"]["top"]])
results["overlap"] = {f"{a}_vs_{b}": overlap(tops[a], tops[b], n_total)
                      for a, b in (("function_vectors", "relation"), ("function_vectors", "pairwise"),
                                   ("relation", "pairwise"), ("relation", "query"))}
(out / "results.json").write_text(json.dumps(results, indent=1, default=str))
for kind in ("relation", "query"):
    p = results["patching"][kind]
    print(kind, round(p["corrupted_value"], 2), round(p["clean_value"], 2), [(t["layer"], t["head"], round(t["value"], 3), round(t["lo"], 3), round(t["hi"], 3)) for t in p["top_ci"][:5]])
fv = results["function_vectors"]
ie, se = torch.tensor(fv["indirect_effect"]), torch.tensor(fv["stderr"])
print("FV top:", [(l, h, round(float(ie[l, h]), 4), round(1.96 * float(se[l, h]), 4)) for l, h in fv["top"][:5]])
print(f"total {time.time() - t0:.1f} s", flush=True)
