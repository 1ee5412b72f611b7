"""Template table (new rule) + pairing_verdict at SmolLM2's settings (issue 25 item 6) on any registered LM.

    flock /tmp/heavy.lock .venv/bin/python -u pairing_run.py gemma-3-270m OUT.json
    # = score_templates(model, task.sample(128, seed=1)) and
    #   pairing_verdict(model, task, n_prompts=128, seeds=(0, 1, 2), knockout_window=5, knockout_stride=5)
    # task = TextICRecallTask(KnowledgeBase.builtin("countries"), model, n_pairs=3)  (model: its own BOS rule)
    # and the composed (sink-dropped) row's evidence every 3 layers, as pairing_smollm2_composed.py printed it.
Arguments: NAME OUT [N_PROMPTS] [SEEDS, e.g. 0,1,2]; NAME "tiny" = a random 2-layer Llama with SmolLM2's tokenizer.
"""
import json, sys, time, warnings
import torch
import os; torch.set_num_threads(int(os.environ.get("THREADS", "1")))
import icr_interp as ii
from icr_interp.analysis.causal.edge_knockout import prediction_margin

name, out = sys.argv[1], sys.argv[2]
n = int(sys.argv[3]) if len(sys.argv) > 3 else 128
seeds = tuple(int(s) for s in sys.argv[4].split(",")) if len(sys.argv) > 4 else (0, 1, 2)
t0 = time.time()
if name == "tiny":
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer
    from icr_interp.model import pretrained_lm
    tok = AutoTokenizer.from_pretrained(pretrained_lm.find_cache("smollm2-135m") / "tokenizer")
    model = HookedTransformer(HookedTransformerConfig(
        n_layers=6, d_model=32, n_heads=4, d_head=8, d_mlp=64, n_ctx=128, d_vocab=len(tok), act_fn="silu",
        normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=8, n_key_value_heads=2,
        gated_mlp=True, final_rms=True, default_prepend_bos=False, seed=0))
    model.set_tokenizer(tok)
    model.eval()
else:
    model = ii.load_pretrained_lm(name)
print(f"load {time.time()-t0:.1f} s; {model.cfg.n_layers} layers x {model.cfg.n_heads} heads", flush=True)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    task = ii.TextICRecallTask(ii.KnowledgeBase.builtin("countries"), model, n_pairs=3)
b = task.sample(n, seed=0)
print("first prompt:", repr(model.tokenizer.decode(b.tokens[0])[:120]), flush=True)
t1 = time.time(); m = prediction_margin(model, b)
acc = float((m > 0).float().mean())
print(f"one forward of {n} prompts {time.time()-t1:.1f} s; accuracy {acc:.3f}", flush=True)
t1 = time.time()
s = ii.score_templates(model, task.sample(n, seed=1))
print(s, flush=True)
t_templates = time.time() - t1
print(f"templates {t_templates:.1f} s", flush=True)
t1 = time.time()
v = ii.pairing_verdict(model, task, n_prompts=n, seeds=seeds, knockout_window=5, knockout_stride=5)
print(v, flush=True)
t_verdict = time.time() - t1
d = v.to_dict()
for layer in range(0, model.cfg.n_layers, 3):
    e = d["composed"]["per_depth"][layer]
    print("composed depth", layer + 1, json.dumps({k: (round(x, 4) if isinstance(x, float) else x)
                                                   for k, x in e.items() if k != "rule"}, default=str), flush=True)
for g, rs in d["knockout_profile"].items():
    print("profile", g, [(r.get("layers"), round(r["logit_diff_change"], 3),
                          [round(c, 3) for c in r["logit_diff_ci"]]) for r in rs], flush=True)
print(f"verdict {t_verdict:.1f} s; total {time.time()-t0:.1f} s", flush=True)
per_head = s.to_dict()["per_head"]
cut = sorted(s.per_example.effect_mass.flatten().tolist())[-10]
json.dump(dict(model=name, n_prompts=n, seeds=list(seeds), accuracy_seed0=acc,
               seconds=dict(templates=t_templates, verdict=t_verdict, total=time.time() - t0),
               verdict=d, templates_top=[h for h in per_head if h["effect_mass"] >= cut]),
          open(out, "w"), indent=1, default=str)
