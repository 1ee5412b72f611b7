"""The printed table of :class:`~icr_interp.analysis.scoring.templates.TemplateScores`: a summary a person can read.

First the count of heads called pairwise (by the rule of :mod:`icr_interp.analysis.scoring.pairing_evidence`) and the
largest edge (effect in attention mass of the true pairing over derangements) with its head; why the starred
"head that matters" is starred; then one row per head -- all of them for a small model, else the
:data:`TOP_ROWS` heads with the largest edge (plus the starred head), with a line saying how many are left out.
"""

from icr_interp.analysis.scoring.pairing_evidence import rule_text

TOP_ROWS = 20  # rows shown when a model has more heads than MAX_ALL_ROWS
MAX_ALL_ROWS = 32  # up to this many heads, every head gets its row

_SHORT = dict(pairwise="pair", answers="ans", subjects="subj", uniform="unif", sink="sink")


def format_table(scores, templates: tuple) -> str:
    """The table of a ``TemplateScores`` whose ``tv`` columns are ``templates`` (see module docstring)."""
    per, mean = scores.per_example, scores.mean_row
    n_layers, n_heads = scores.n_layers, scores.n_heads
    heads = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    n_pairwise = sum(per.best[layer][head] == "pairwise" for layer, head in heads)
    edge = per.effect_mass
    top = max(heads, key=lambda h: float(edge[h]))
    lines = [f"TemplateScores: {scores.n_examples} examples; {n_pairwise} of {len(heads)} heads pairwise ({rule_text()})",
             f"largest edge: L{top[0]}H{top[1]} effect {float(edge[top]):.4f} in attention mass "
             f"({float(per.effect[top]):.3f} renormalised, p {float(per.p_value[top]):.4g}; adjacency margin "
             f"{float(per.adjacency[top]):.4f}, p {float(per.adjacency_p[top]):.4g}; position p "
             f"{float(per.position_p[top]):.4g}; best {per.best[top[0]][top[1]]})",
             f"(*) head that matters: L{scores.layer}H{scores.head}, the last layer's head with the most pair mass "
             f"unless chosen; pairwise = 1 - TV to the pairwise family (a distance, not the test); null = it over "
             f"re-pairings; edge = pairing effect in attention mass; left of | per example, right mean row"]
    if len(heads) > MAX_ALL_ROWS:
        shown = sorted(heads, key=lambda h: -float(edge[h]))[:TOP_ROWS]
        if (scores.layer, scores.head) not in shown:
            shown.append((scores.layer, scores.head))
        lines.append(f"top {len(shown)} of {len(heads)} heads by edge ({len(heads) - len(shown)} not shown; "
                     f"to_dict()['per_head'] has every head)")
    else:
        shown = heads
    tv_cols = " ".join(f"{'tv_' + _SHORT[t]:>7}" for t in templates)
    lines.append(f"  L  H  {'pairwise':>8} {'null':>6} {'edge':>7} {'effect':>6} {'p':>6} {'adj':>7} {'p_adj':>6} {'p_pos':>6} "
                 f"{'balance':>7} {'pairmass':>8} {'best':>9} {tv_cols} | {'pairwise':>8} {'null':>6} {'edge':>7} "
                 f"{'pairmass':>8} {'best':>9}")
    for layer, head in shown:
        h = (layer, head)
        left = (f"{per.pairwise[h]:8.3f} {per.pairwise_null[h]:6.3f} {per.effect_mass[h]:7.4f} {per.effect[h]:6.3f} "
                f"{per.p_value[h]:6.4f} {per.adjacency[h]:7.4f} {per.adjacency_p[h]:6.4f} {per.position_p[h]:6.4f} "
                f"{per.balance[h]:7.3f} "
                f"{per.pair_mass[h]:8.3f} {per.best[layer][head]:>9}")
        right = (f"{mean.pairwise[h]:8.3f} {mean.pairwise_null[h]:6.3f} {mean.effect_mass[h]:7.4f} "
                 f"{mean.pair_mass[h]:8.3f} {mean.best[layer][head]:>9}")
        tvs = " ".join(f"{v:7.3f}" for v in per.tv[h].tolist())
        mark = "*" if h == (scores.layer, scores.head) else " "
        lines.append(f"{mark}{layer:2d} {head:2d}  {left} {tvs} | {right}")
    return "\n".join(lines)
