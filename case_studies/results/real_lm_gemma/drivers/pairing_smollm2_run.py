"""SmolLM2-135M: the template table (new rule) and pairing_verdict (128 prompts x 3 seeds)."""
import json, time, torch, warnings, sys
torch.set_num_threads(1)
import icr_interp as ii
from icr_interp.analysis.causal.edge_knockout import prediction_margin
out = sys.argv[1]
t0 = time.time()
model = ii.load_pretrained_lm("smollm2-135m")
print(f"load {time.time()-t0:.1f} s", flush=True)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    task = ii.TextICRecallTask(ii.KnowledgeBase.builtin("countries"), model.tokenizer, n_pairs=3)
b = task.sample(128, seed=0)
t1 = time.time(); m = prediction_margin(model, b)
print(f"one forward of 128 prompts {time.time()-t1:.1f} s; accuracy {float((m > 0).float().mean()):.3f}", flush=True)
t1 = time.time()
s = ii.score_templates(model, task.sample(128, seed=1))
print(s, flush=True)
print(f"templates {time.time()-t1:.1f} s", flush=True)
t1 = time.time()
v = ii.pairing_verdict(model, task, n_prompts=128, seeds=(0, 1, 2), knockout_window=5, knockout_stride=5)
print(v, flush=True)
print(f"verdict {time.time()-t1:.1f} s; total {time.time()-t0:.1f} s", flush=True)
json.dump(dict(verdict=v.to_dict(), templates_top=[h for h in s.to_dict()["per_head"]
          if h["effect_mass"] >= sorted(s.per_example.effect_mass.flatten().tolist())[-10]]),
          open(out, "w"), indent=1, default=str)
