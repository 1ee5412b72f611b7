"""Where the pairing happens: one verdict -- "pairwise in a head", "pairwise by composition" or "neither".

The paper's claim is that the query attends pairwise.  A deep model may do it in one head, or spread it over
two steps (answers read their subjects, the prediction reads the answers).  The verdict pools prompts from
several seeds and asks, in order:

1. **pairwise in a head** -- some head's prediction row passes the pairing rule
   (:mod:`icr_interp.analysis.scoring.pairing_evidence`: re-pairing null and adjacency control at ``alpha``, effect
   >= :data:`~icr_interp.analysis.scoring.pairing_test.PAIRING_MIN_MASS` in attention mass) and is nearer the pairwise
   family than the uniform template by ``UNIFORM_MARGIN`` (the rule of ``score_templates``);
2. **pairwise by composition** -- otherwise, the effective row composed through the residual stream
   (:mod:`icr_interp.analysis.scoring.composed_pairing`, with the attention sink dropped: over many layers a plain
   rollout ends on the sink) passes the same rule *and* the position control
   (:mod:`icr_interp.analysis.scoring.position_control`; needs >= 2 layers).  The composed claim is that each answer
   carries its own prompt's subject; a profile shared by every prompt is not that (measured: 1 of 24
   random-weight 2-3-layer models passes the rule alone, 0 with the position control);
3. **neither**.

Evidence, reported whichever way it comes out: the pairwise heads with their effects and 95% bootstrap
intervals (pooled over prompts) and per seed; the composed row's test at every depth; attention-edge
knockouts of every group over all layers and in a sliding window (:mod:`icr_interp.analysis.causal.edge_knockout`);
the binding-interchange curve (:mod:`icr_interp.analysis.causal.binding`).  The knockouts and the binding curve
show whether the pairing the attention shows is *used*; they do not change the word.

Example::

    v = pairing_verdict(model, task, n_prompts=128, seeds=(0, 1, 2))
    print(v)          # the verdict and its evidence
    v.to_dict()
"""

from dataclasses import dataclass, field

import torch

from icr_interp.analysis.scoring.adjacency_control import pseudo_pair_distances
from icr_interp.analysis.scoring.attention import query_rows
from icr_interp.analysis.causal.binding import binding_interchange
from icr_interp.analysis.scoring.composed_pairing import composed_masses
from icr_interp.analysis.causal.edge_knockout import GROUPS, knockout_profile
from icr_interp.analysis.scoring.pairing_evidence import pairing_evidence, rule_text
from icr_interp.analysis.scoring.pairing_test import pairing_test_rows
from icr_interp.analysis.scoring.templates import RoleMass, best_template, template_tv
from icr_interp.task.protocol import PromptTask
from icr_interp.tl.compat import TLModel

VERDICTS = ("pairwise in a head", "pairwise by composition", "neither")


@dataclass(frozen=True)
class PairingVerdict:
    """The verdict and its evidence (plain data)."""

    verdict: str  # one of VERDICTS
    pairwise_heads: list  # [[layer, head], ...] that pass the rule
    evidence: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(verdict=self.verdict, pairwise_heads=self.pairwise_heads, **self.evidence)

    def __str__(self) -> str:
        e = self.evidence
        top, comp = e["top_head"], e["composed"]["full_depth"]
        lines = [f"PairingVerdict: {self.verdict}  ({e['n_prompts']} prompts over seeds {e['seeds']}; {e['rule']})",
                 f"  pairwise heads: {len(self.pairwise_heads)} of {e['n_heads']}"
                 + (f" {self.pairwise_heads[:8]}" if self.pairwise_heads else ""),
                 f"  top head L{top['layer']}H{top['head']}: effect {top['effect_mass']:.4f} in mass "
                 f"[{top['effect_mass_ci'][0]:.4f}, {top['effect_mass_ci'][1]:.4f}], p {top['p_value']:.4g}; "
                 f"adjacency margin {top['adjacency']['margin_mass']:.4f}, p {top['adjacency']['p_value']:.4g}; "
                 f"position p {top['position']['p_value']:.4g}; seeds passing alone "
                 f"{e['robustness']['top_head_seeds_passing']} of {len(e['seeds'])}",
                 f"  composed row: effect {comp['effect_mass']:.4f} in mass [{comp['effect_mass_ci'][0]:.4f}, "
                 f"{comp['effect_mass_ci'][1]:.4f}], p {comp['p_value']:.4g}; adjacency p "
                 f"{comp['adjacency']['p_value']:.4g}; pair mass {comp['pair_mass']:.3f}"]
        for name, r in e["knockout_all_layers"].items():
            lines.append(f"  knock out {name:<28} all layers: logit diff {r['logit_diff_change']:+.3f} "
                         f"[{r['logit_diff_ci'][0]:+.3f}, {r['logit_diff_ci'][1]:+.3f}], accuracy "
                         f"{r['accuracy_change']:+.3f}")
        b = e["binding"]
        if b is not None:
            lines.append(f"  binding interchange (follows the bound subject, per layer): "
                         + " ".join(f"{x:.2f}" for x in b["follows_bound"]) + f" ({b['n_informative']} informative)")
        return "\n".join(lines)

    __repr__ = __str__


def _pooled_masses(model: TLModel, task, n_prompts: int, seeds) -> tuple[RoleMass, RoleMass, list]:
    """Head and composed role masses of every seed's prompts, concatenated over prompts; the batches."""
    heads, composed, batches = [], [], []
    for seed in seeds:
        batch = task.sample(n_prompts, seed=seed)
        batches.append(batch)
        heads.append(RoleMass.of(query_rows(model, batch), batch.layout))
        composed.append(composed_masses(model, batch, drop_sink=True))
    cat = lambda ms, dim: RoleMass(*(torch.cat([getattr(m, f).cpu() for m in ms], dim)  # noqa: E731
                                     for f in ("subject", "answer", "bos", "query")))
    return cat(heads, 2), cat(composed, 1), batches


def pairing_verdict(model: TLModel, task: PromptTask, n_prompts: int = 128, seeds=(0, 1, 2), *, knockout_window: int = 1,
                    knockout_stride: int = 1, binding: bool = True) -> PairingVerdict:
    """Decide where ``model`` pairs on ``task``'s prompts (see module docstring).

    Args:
        model: any HookedTransformer with the task's vocabulary.
        task: an ``ICRecallTask`` or ``TextICRecallTask`` (a :class:`~icr_interp.task.protocol.PromptTask`).
        n_prompts: prompts per seed (>= 2).
        seeds: prompt seeds; the tests pool ``n_prompts * len(seeds)`` prompts.
        knockout_window, knockout_stride: layers per window of the knockout profile and the step between
            windows (run on the first seed's prompts).
        binding: whether to run the binding interchange (first seed's prompts; needs k >= 2).
    """
    seeds = tuple(seeds)
    if not seeds or n_prompts < 2:
        raise ValueError(f"pairing_verdict needs at least one seed and n_prompts >= 2, got {seeds}, {n_prompts}")
    heads, composed, batches = _pooled_masses(model, task, n_prompts, seeds)
    ev = pairing_evidence(heads.subject, heads.answer)
    best = best_template(template_tv(heads).mean(2), ev.shown)
    n_layers, n_heads = ev.shown.shape
    pairwise = [[layer, head] for layer in range(n_layers) for head in range(n_heads) if best[layer][head] == "pairwise"]
    flat = int(ev.test.effect_mass.flatten().argmax())
    top = dict(layer=flat // n_heads, head=flat % n_heads, **ev.at(flat // n_heads, flat % n_heads))
    per_seed = [pairing_test_rows(heads.subject[top["layer"], top["head"], i * n_prompts:(i + 1) * n_prompts],
                                  heads.answer[top["layer"], top["head"], i * n_prompts:(i + 1) * n_prompts]).at()
                for i in range(len(seeds))]
    cev = pairing_evidence(composed.subject, composed.answer)
    comp = dict(full_depth=dict(cev.at(n_layers - 1), pair_mass=float(composed.pair_mass[-1].mean())),
                per_depth=[cev.at(layer) for layer in range(n_layers)],
                shown=bool(cev.shown[-1]) and float(cev.position.p_value[-1]) <= cev.alpha)
    first = batches[0]
    whole = knockout_profile(model, first, window=n_layers)
    profile = knockout_profile(model, first, window=knockout_window, stride=knockout_stride)
    k = first.layout.answer_end.shape[1]
    curve = binding_interchange(model, first).to_dict() if binding and k >= 2 else None
    floor = ev.min_mass
    robust = dict(  # does the call survive its uncertainty? (reported; the word follows the rule)
        top_head_interval_clears_floor=top["effect_mass_ci"][0] >= floor,
        top_head_seeds_passing=sum(s["p_value"] <= ev.alpha and s["effect_mass"] >= floor for s in per_seed),
        composed_interval_clears_floor=comp["full_depth"]["effect_mass_ci"][0] >= floor)
    if pairwise:
        word = VERDICTS[0]
    elif n_layers >= 2 and comp["shown"]:
        word = VERDICTS[1]
    else:
        word = VERDICTS[2]
    evidence = dict(rule=rule_text(), n_prompts=n_prompts * len(seeds), seeds=list(seeds), n_heads=n_layers * n_heads,
                    top_head=top, top_head_per_seed=per_seed, composed=comp, robustness=robust,
                    knockout_all_layers={name: rs[0].to_dict() for name, rs in whole.items()},
                    knockout_profile={name: [r.to_dict() for r in rs] for name, rs in profile.items()},
                    knockout_window=knockout_window, binding=curve,
                    token_distances=pseudo_pair_distances(first.layout),
                    groups=[f"{s} -> {t}" for s, t in GROUPS])
    return PairingVerdict(word, pairwise, evidence)
