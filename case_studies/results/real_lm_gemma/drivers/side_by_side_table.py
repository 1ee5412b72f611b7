"""One side-by-side markdown table from the case-study results.json and the pairing-verdict JSON of each model.

    .venv/bin/python side_by_side_table.py NAME=RESULTS.json:PAIRING.json:N_LAYERS ...
"""
import json, sys

cols = []
for arg in sys.argv[1:]:
    name, rest = arg.split("=", 1)
    res, pair, n_layers = rest.split(":")
    r = json.load(open(res))
    p = json.load(open(pair)) if pair and pair != "-" else None
    cols.append((name, r, p, int(n_layers)))


def row(label, f):
    cells = []
    for name, r, p, L in cols:
        try:
            cells.append(f(r, p, L))
        except (KeyError, TypeError, IndexError):
            cells.append("not run")
    print(f"| {label} | " + " | ".join(cells) + " |")


def hd(layer, head, L):
    return f"L{layer}H{head} ({layer / L:.2f})"


print("| | " + " | ".join(c[0] for c in cols) + " |")
print("|---|" + "---|" * len(cols))
row("prompts: recall per k / templates / patching per swap / FV", lambda r, p, L: f"{r['config']['n_prompts']} / {r['templates']['n_examples']} / {r['patching']['relation']['n_prompts']} / {r['function_vectors']['n_prompts']}")
row("layers x heads", lambda r, p, L: f"{L} x {len(r['templates']['edge'][0])}")
ks = sorted({int(k) for _, r, _, _ in cols for k in r["recall"]["by_k"]})
for k in ks:
    row(f"top-1 accuracy, k = {k}" + (" (zero-shot)" if k == 0 else ""),
        lambda r, p, L, k=k: (lambda s: f"{s['accuracy']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]")(r["recall"]["by_k"][str(k)]))
row("relation named (k = 0)", lambda r, p, L: (lambda s: f"{s['accuracy']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]")(r["recall"]["named"]))
for kind, label in (("relation", "relation heads (relation swap, head z at prediction; normalised)"),
                    ("query", "lookup heads (query swap)")):
    row(f"{label}: corrupted / clean logit diff; prompts",
        lambda r, p, L, kind=kind: f"{r['patching'][kind]['corrupted_value']:.2f} / {r['patching'][kind]['clean_value']:.2f}; "
                                   f"{r['patching'][kind]['n_prompts']}")
    for i in range(5):
        row(f"{kind} #{i + 1} (layer / depth)",
            lambda r, p, L, kind=kind, i=i: (lambda t: f"{hd(t['layer'], t['head'], L)} {t['value']:.3f} [{t['lo']:.3f}, {t['hi']:.3f}]")(r["patching"][kind]["top_ci"][i]))
for i in range(5):
    row(f"function-vector head #{i + 1} (CIE +- 1.96 s.e.)",
        lambda r, p, L, i=i: (lambda l, h: f"{hd(l, h, L)} {r['function_vectors']['indirect_effect'][l][h]:.3f} +- "
                                           f"{1.96 * r['function_vectors']['stderr'][l][h]:.3f}")(*r["function_vectors"]["top"][i]))
row("FV overlap with top-10 relation heads", lambda r, p, L: str(r["overlap"]["function_vectors_vs_relation"].get("shared", r["overlap"]["function_vectors_vs_relation"])))
row("templates (k = 4): pairwise heads by the null rule; largest edge",
    lambda r, p, L: f"{r['templates']['n_significant']} of {r['templates']['n_heads']}; "
                    f"{hd(r['templates']['top'][0]['layer'], r['templates']['top'][0]['head'], L)} {r['templates']['top'][0]['edge']:+.3f}")
row("causal template test, top-5 relation heads: recovered (null mean)",
    lambda r, p, L: f"{r['causal']['relation_heads']['recovered']['pairwise']:.3f} ({r['causal']['relation_heads']['null_mean']:.3f}); beats every null: {r['causal']['relation_heads']['beats_null']}")
row("causal test, top-5 relation heads: 'answers' / 'uniform' templates recover",
    lambda r, p, L: f"{r['causal']['relation_heads']['recovered']['answers']:.3f} / {r['causal']['relation_heads']['recovered']['uniform']:.3f}")
row("case-study verdict", lambda r, p, L: r["verdict"]["verdict"])
V = lambda p: p["verdict"]
row("pairing verdict (k = 3; prompts over seeds)", lambda r, p, L: f"**{V(p)['verdict']}** ({V(p)['n_prompts']} over {V(p)['seeds']})")
row("pairwise heads (rule)", lambda r, p, L: ", ".join(hd(a, b, L) for a, b in V(p)["pairwise_heads"]) or "none")
row("top head: effect in mass [95%]; adjacency margin (p); position p; seeds passing",
    lambda r, p, L: (lambda t: f"{hd(t['layer'], t['head'], L)} {t['effect_mass']:.4f} [{t['effect_mass_ci'][0]:.4f}, "
                               f"{t['effect_mass_ci'][1]:.4f}]; {t['adjacency']['margin_mass']:.3f} ({t['adjacency']['p_value']:.3g}); "
                               f"{t['position']['p_value']:.3g}; {sum(s['p_value'] <= 0.01 and s['effect_mass'] >= 0.05 for s in V(p)['top_head_per_seed'])} of {len(V(p)['seeds'])}")(V(p)["top_head"]))
row("composed row, full depth (sink dropped): effect in mass; p; adjacency p; position p; pair mass",
    lambda r, p, L: (lambda c: f"{c['effect_mass']:.4f}; {c['p_value']:.3g}; {c['adjacency']['p_value']:.3g}; "
                               f"{c['position']['p_value']:.3g}; {c['pair_mass']:.2f}")(V(p)["composed"]["full_depth"]))
for g in V(cols[0][2])["knockout_all_layers"]:
    row(f"knock out {g}, all layers: logit diff [95%]; accuracy",
        lambda r, p, L, g=g: (lambda x: f"{x['logit_diff_change']:+.2f} [{x['logit_diff_ci'][0]:+.2f}, {x['logit_diff_ci'][1]:+.2f}]; "
                                        f"{x['accuracy_change']:+.3f}")(V(p)["knockout_all_layers"][g]))
for g in V(cols[0][2])["knockout_profile"]:
    def prof(r, p, L, g=g):
        parts = []
        for x in V(p)["knockout_profile"][g]:
            lo, hi = x["logit_diff_ci"]
            mark = "**" if hi < 0 or lo > 0 else ""
            parts.append(f"{mark}L{x['layers'][0]}-{x['layers'][-1]} ({x['layers'][0] / L:.2f}-{(x['layers'][-1] + 1) / L:.2f}) "
                         f"{x['logit_diff_change']:+.2f}{mark}")
        return "; ".join(parts)
    row(f"profile {g} (windows of 5 layers; bold: interval excludes 0)", prof)
def binding(r, p, L):
    b = V(p)["binding"]
    f = b["follows_bound"]
    first = lambda th: next((i for i, x in enumerate(f) if x >= th), None)
    return "; ".join(f">= {th}: L{first(th)} ({first(th) / L:.2f})" if first(th) is not None else f">= {th}: never"
                     for th in (0.5, 0.9)) + f" ({b['n_informative']} informative)"
row("binding interchange: first layer the prediction follows the bound subject", binding)
row("clean top-1 accuracy, k = 3, seed-0 prompts of the verdict", lambda r, p, L: f"{p['accuracy_seed0']:.3f}" if "accuracy_seed0" in p else "0.477 (log)")
