import time, torch, warnings, json
torch.set_num_threads(1)
import icr_interp as ii
from icr_interp.analysis.scoring.composed_pairing import composed_masses
from icr_interp.analysis.scoring.pairing_evidence import pairing_evidence
from icr_interp.analysis.scoring.templates import RoleMass
t0 = time.time()
model = ii.load_pretrained_lm("smollm2-135m")
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    task = ii.TextICRecallTask(ii.KnowledgeBase.builtin("countries"), model.tokenizer, n_pairs=3)
ms = [composed_masses(model, task.sample(128, seed=s), drop_sink=True) for s in (0, 1, 2)]
m = RoleMass(*(torch.cat([getattr(x, f).cpu() for x in ms], 1) for f in ("subject", "answer", "bos", "query")))
ev = pairing_evidence(m.subject, m.answer)
for layer in range(0, 30, 3):
    print(layer, json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in ev.at(layer).items() if k != "rule"}))
print(29, ev.at(29))
print("pair mass by depth", [round(float(x), 3) for x in m.pair_mass.mean(-1)][::3])
print(f"total {time.time()-t0:.1f} s")
