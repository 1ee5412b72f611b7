"""The case study's causal phase and verdict alone on N prompts (same task, heads and call as run_real_lm).

    flock /tmp/heavy.lock .venv/bin/python -u causal_run.py gemma-3-270m case_studies/results/real_lm_gemma N
"""
import json, os, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
from icr_interp.experiments.real_lm import RealLMConfig, phase_causal, verdict
from icr_interp.model.pretrained_lm import load_pretrained_lm
from icr_interp.task.text import TextICRecallTask

name, out, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
t0 = time.time()
model = load_pretrained_lm(name)
results = json.loads((out / "results.json").read_text())
cfg = RealLMConfig(**{**results["config"], "n_prompts": n})
task = TextICRecallTask(cfg.knowledge_base(), model, cfg.k, cfg.pair_template, cfg.query_template)
tops = dict(relation=[tuple(h) for h in results["patching"]["relation"]["top"][:cfg.top_n]],
            pairwise=[(r["layer"], r["head"]) for r in results["templates"]["top"]])
t1 = time.time()
results["causal"] = phase_causal(model, task, cfg, dict(relation_heads=tops["relation"][:cfg.top_causal],
                                                       pairwise_heads=tops["pairwise"][:cfg.top_causal]), print)
results["timings"]["causal"] = round(time.time() - t1, 1)
results["rerun"]["causal"] = dict(n_prompts=n, seconds=results["timings"]["causal"],
                                  why="run apart (the 128-prompt run was stopped at this phase); /work/brief/out/h26/causal_run.py")
results["verdict"] = verdict(results)
(out / "results.json").write_text(json.dumps(results, indent=1, default=str))
for k, c in results["causal"].items():
    print(k, round(c["recovered"]["pairwise"], 3), round(c["null_mean"], 3), c["beats_null"], c.get("reliable"))
print("verdict", results["verdict"]["verdict"], f"causal {results['timings']['causal']} s; total {time.time() - t0:.1f} s")
