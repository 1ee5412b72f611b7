"""The paper's claim on a real language model: does IC-recall run through pairwise attention rows?

Six phases on a pretrained LM (``load_pretrained_lm``) and a text IC-recall task (any knowledge base, any
templates), each a library call, with one JSON of everything and three figures:

a. **recall**: top-1 accuracy against k (``recall_curve``) beside the zero-shot and named-relation baselines;
b. **templates**: every (layer, head) at the prediction position against the pairwise template with its
   pairing null (``score_templates``; the toolkit's rule: ``best == "pairwise"`` needs
   the rule of :func:`icr_interp.analysis.scoring.pairing_evidence.rule_text`), heads ranked by their pairing edge;
c. **patching by head**: each head's clean ``z`` at the prediction position patched into relation-swapped
   prompts (relation inference) and query-swapped ones (lookup), by suffix recomputation
   (:func:`~icr_interp.analysis.causal.patching.patch_heads`, the engine's suffix strategy);
d. **function vectors**: every head's causal indirect effect (Todd et al. 2024) and the overlap of the top
   heads of (b), (c) and (d), with what chance would give;
e. **causal template test** (``causal_template_test``) on the top relation-inference heads and on the top
   pairwise heads: what the pairwise template, its re-paired null, answers-only and subjects-only recover;
f. **verdict** on the claim (:func:`verdict`): agrees, partly or disagrees, with the evidence.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable, Sequence

import torch

from icr_interp.analysis.causal.causal_template import causal_template_test
from icr_interp.analysis.causal.function_vectors import function_vector_heads
from icr_interp.analysis.recall import recall_curve
from icr_interp.analysis.causal.patching import patch_heads
from icr_interp.analysis.scoring.templates import score_templates
from icr_interp.storage import atomic
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.text import DEFAULT_PAIR_TEMPLATE, DEFAULT_QUERY_TEMPLATE, TextICRecallTask

RECOVERY_FOR_AGREEMENT = 0.5  # the pairwise template must recover at least this much of the logit difference


@dataclass(frozen=True)
class RealLMConfig:
    """One run of the real-LM study (every field lands in the JSON)."""

    model: str = "smollm2-135m"  # load_pretrained_lm name
    builtin: str | None = "countries"  # built-in knowledge base (None: csv)
    csv: str | None = None  # a user's CSV (subject,relation,answer)
    k: int = 4  # context pairs in the analysed prompts
    n_prompts: int = 128  # prompts per analysis (and per k in the recall curve)
    max_k: int = 8  # the recall curve runs k = 0..max_k
    pair_template: str = DEFAULT_PAIR_TEMPLATE
    query_template: str = DEFAULT_QUERY_TEMPLATE
    seed: int = 0
    top_n: int = 10  # heads compared across methods (and written into, for the causal test: top_causal)
    top_causal: int = 5  # heads whose prediction rows the causal test overwrites
    n_null: int = 8  # re-paired null templates of the causal test

    def knowledge_base(self) -> KnowledgeBase:
        if (self.builtin is None) == (self.csv is None):
            raise ValueError("give exactly one of builtin and csv")
        return KnowledgeBase.builtin(self.builtin) if self.csv is None else KnowledgeBase.from_csv(self.csv)


def ranked(values: torch.Tensor, n: int) -> list[tuple[int, int]]:
    """The ``n`` (layer, head) with the largest ``values[layer, head]``, largest first."""
    order = values.flatten().argsort(descending=True)[:n].tolist()
    return [(i // values.shape[1], i % values.shape[1]) for i in order]


def overlap(a: list, b: list, n_total: int) -> dict:
    """Shared heads of two top lists, and what two random lists of those sizes would share on average."""
    shared = sorted(set(map(tuple, a)) & set(map(tuple, b)))
    return dict(shared=[list(h) for h in shared], n_shared=len(shared), expected_by_chance=len(a) * len(b) / n_total)


def phase_templates(model, task: TextICRecallTask, cfg: RealLMConfig) -> dict:
    """(b) Template scores of every head with the pairing null; heads ranked by pairwise - null."""
    scores = score_templates(model, task.sample(cfg.n_prompts, seed=cfg.seed + 1))
    edge = scores.pairwise - scores.pairwise_null
    significant = [(layer, head) for layer in range(scores.n_layers) for head in range(scores.n_heads)
                   if scores.best[layer][head] == "pairwise"]
    top = ranked(edge, cfg.top_n)
    rows = [dict(layer=layer, head=head, edge=float(edge[layer, head]), **{
        k: v for k, v in scores.per_example.at(layer, head).items() if k in ("pairwise", "pairwise_null", "p_value",
                                                                          "balance", "pair_mass", "best")})
        for layer, head in top]
    combined = [dict(layer=c["layer"], pairwise=c["pairwise"], pairwise_null=c["pairwise_null"], p_value=c["p_value"],
                     best=c["best"]) for c in scores.to_dict()["combined"]]
    return dict(edge=edge.tolist(), top=rows, significant=[list(h) for h in significant],
                n_significant=len(significant), n_heads=scores.n_layers * scores.n_heads, combined=combined,
                n_examples=scores.n_examples)


def phase_patching(model, task: TextICRecallTask, cfg: RealLMConfig, log: Callable[[str], None] = print) -> dict:
    """(c) Every head's z at the prediction position, relation swap and query swap; the top heads' effects
    with 95% bootstrap intervals over prompts (:func:`~icr_interp.experiments.probe_grid.restored_interval`)."""
    from icr_interp.experiments.probe_grid import per_prompt_cells, restored_interval
    from icr_interp.model.hooks import hook

    out = {}
    for i, kind in enumerate(("relation", "query")):
        pairs = task.sample_pairs(cfg.n_prompts, kind, seed=cfg.seed + 2 + i)
        res = patch_heads(model, pairs.clean, pairs.corrupted)
        out[kind] = dict(values=res.heads().tolist(), clean_value=res.clean_value,
                         corrupted_value=res.corrupted_value, reliable=res.reliable, reason=res.reason,
                         top=[list(h) for h in res.top_heads(max(10, cfg.top_n))], n_prompts=len(pairs.clean),
                         n_dropped=pairs.n_dropped)
        top = out[kind]["top"][:cfg.top_n]
        runs = per_prompt_cells(model, pairs.clean, pairs.corrupted, [(hook(l, "z"), h, "prediction") for l, h in top])
        ci = restored_interval(runs["patched"], runs["clean"], runs["corrupted"], seed=cfg.seed)
        out[kind]["top_ci"] = [dict(layer=l, head=h, value=v, lo=lo, hi=hi)
                               for (l, h), v, lo, hi in zip(top, ci["value"], ci["lo"], ci["hi"])]
        log(f"   {kind} swap: {model.cfg.n_layers * model.cfg.n_heads} heads patched on {len(pairs.clean)} prompts")
    return out


def recall_intervals(recall: dict, seed: int = 0) -> dict:
    """95% bootstrap intervals over prompts of every accuracy of a recall curve's dict (added in place)."""
    from icr_interp.analysis.bootstrap import bootstrap_mean_ci

    for scores in [*recall["by_k"].values(), *([recall["named"]] if recall.get("named") else [])]:
        n = scores["n_prompts"]
        hits = torch.zeros(n)
        hits[:round(scores["accuracy"] * n)] = 1.0  # the bootstrap of a mean of 0/1 depends on the count only
        lo, hi = bootstrap_mean_ci(hits, seed=seed)
        scores.update(lo=float(lo), hi=float(hi))
    return recall


def phase_function_vectors(model, task: TextICRecallTask, cfg: RealLMConfig) -> dict:
    """(d) Causal indirect effect of every head (means over clean prompts, patched into shuffled ones)."""
    pairs = task.sample_pairs(cfg.n_prompts, "shuffle", seed=cfg.seed + 4)
    return function_vector_heads(model, pairs.clean, pairs.corrupted).to_dict()


def phase_causal(model, task: TextICRecallTask, cfg: RealLMConfig, head_sets: dict,
                 log: Callable[[str], None] = print) -> dict:
    """(e) The causal template test (relation-swap logit difference) on each named set of heads."""
    pairs = task.sample_pairs(cfg.n_prompts, "relation", seed=cfg.seed + 5)
    out = {}
    for name, heads in head_sets.items():
        out[name] = causal_template_test(model, pairs.clean, heads=[tuple(h) for h in heads], corrupted=pairs.corrupted,
                                         n_null=cfg.n_null, seed=cfg.seed).to_dict()
        log(f"   {name}: pairwise template recovers {out[name]['recovered']['pairwise']:.3f}")
    return out


def verdict(results: dict) -> dict:
    """(f) Agrees / partly / disagrees, from three questions (each answered with its numbers)."""
    t, p, c = results["templates"], results["patching"], results["causal"]
    rel = torch.tensor(p["relation"]["values"])
    sig = [tuple(h) for h in t["significant"]]
    top_rel = [tuple(h) for h in p["relation"]["top"]]
    carried = [h for h in sig if h in top_rel]
    best_rel = max((float(rel[h]) for h in sig), default=float("nan"))
    test = c["relation_heads"]
    recovers = test["recovered"]["pairwise"] >= RECOVERY_FOR_AGREEMENT and test["beats_null"]
    q1, q2, q3 = bool(sig), bool(carried), bool(recovers)
    word = "agrees" if q1 and q2 and q3 else "disagrees" if not (q1 or q3) else "partly"
    return dict(verdict=word, pairwise_heads_exist=q1, n_pairwise_heads=len(sig), pairwise_heads_carry_relation=q2,
                pairwise_heads_in_top_relation=[list(h) for h in carried],
                best_relation_patch_of_a_pairwise_head=best_rel, pairwise_template_recovers=q3,
                recovered_pairwise=test["recovered"]["pairwise"], null_mean=test["null_mean"],
                beats_null=test["beats_null"], relation_patching_reliable=p["relation"]["reliable"],
                rule=(f"agrees: some head is 'pairwise' by the null rule, one of them is among the top "
                      f"relation-inference heads, and the pairwise template written into the top relation heads "
                      f"recovers >= {RECOVERY_FOR_AGREEMENT} of the logit difference and beats every re-paired null; "
                      f"disagrees: no pairwise head and no recovery; partly: anything between"))


def plan(model, cfg: RealLMConfig, n_pos: int) -> dict:
    """Token-blocks of each phase (module docstring), for the time estimate: whole forwards, and for the
    per-head patches the blocks after each head's layer at the prediction position only."""
    n, layers, heads = cfg.n_prompts, model.cfg.n_layers, model.cfg.n_heads
    forward = n * n_pos * layers
    per_head = n * heads * layers * (layers + 1) / 2  # every head's patch reruns its later blocks, one row
    recall = sum(forward * (k + 1) / (cfg.k + 1) for k in range(cfg.max_k + 1)) + forward
    return dict(recall=recall, templates=forward, patching=2 * (3 * forward + per_head),
                function_vectors=2 * forward + per_head, causal=2 * (5 + cfg.n_null) * forward)


PHASES = ("recall", "templates", "patching", "function_vectors", "causal")
NEEDS = dict(causal=("patching", "templates"))  # a phase that reads another phase's results


def run_real_lm(model, cfg: RealLMConfig, out: str | Path, progress: Callable[[str], None] = print,
                only: Sequence[str] | None = None) -> dict:
    """All phases on ``model``, after printing an estimate calibrated on one forward; writes ``results.json``
    (rewritten after each phase, so a killed run keeps what finished) and the figures into ``out``.

    ``only``: run just these phases into the ``results.json`` in ``out`` (a new one if there is none) and keep the
    others -- a phase a stopped run did not reach, or one rerun after a fix, possibly on another number of
    prompts. The stored config must match ``cfg`` but for ``n_prompts``; each phase run this way is recorded
    under ``"rerun"`` with its prompt count, and the overlap and verdict are recomputed from what is there.
    """
    from icr_interp.experiments.progress import Phases, calibrate

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task = TextICRecallTask(cfg.knowledge_base(), model, cfg.k, cfg.pair_template, cfg.query_template)
    todo = PHASES if only is None else check_phases(only)
    results: dict = dict(config=asdict(cfg), excluded=task.excluded, example_prompt=task.prompt_text(
        task.sample(1, seed=cfg.seed), 0), timings={})
    if only is not None and (out / "results.json").exists():
        results = _stored(out, cfg)
    for need in (n for name in todo for n in NEEDS.get(name, ()) if n not in results and n not in todo):
        raise ValueError(f"the {', '.join(todo)} phase(s) need the {need} phase's results in {out / 'results.json'}")
    sample = task.sample(min(cfg.n_prompts, 32), seed=cfg.seed)
    cal = calibrate(model, sample.tokens)
    plan_s = plan(model, cfg, sample.tokens.shape[1])
    phases = Phases({k: cal.seconds(plan_s[k]) for k in todo}, log=progress)
    phases.announce(cal)

    def phase(name: str, fn):
        if name not in todo:
            return
        results[name] = phases.run(name, fn)
        results["timings"][name] = phases.timings[name]
        if only is not None:
            results.setdefault("rerun", {})[name] = dict(n_prompts=cfg.n_prompts, seconds=phases.timings[name])
        _save(out, results)  # partial results kept

    phase("recall", lambda: recall_intervals(recall_curve(model, task, range(cfg.max_k + 1), n_prompts=cfg.n_prompts,
                                                          seed=cfg.seed, batch_size=32).to_dict(), cfg.seed))
    phase("templates", lambda: phase_templates(model, task, cfg))
    phase("patching", lambda: phase_patching(model, task, cfg, phases.log))
    phase("function_vectors", lambda: phase_function_vectors(model, task, cfg))
    tops = _tops(results, cfg.top_n)
    if all(key in results for key in ("function_vectors", "patching", "templates")):
        n_total = model.cfg.n_layers * model.cfg.n_heads
        results["overlap"] = {f"{a}_vs_{b}": overlap(tops[a], tops[b], n_total)
                              for a, b in (("function_vectors", "relation"), ("function_vectors", "pairwise"),
                                           ("relation", "pairwise"), ("relation", "query"))}
    phase("causal", lambda: phase_causal(model, task, cfg, dict(relation_heads=tops["relation"][:cfg.top_causal],
                                                               pairwise_heads=tops["pairwise"][:cfg.top_causal]),
                                        phases.log))
    if all(key in results for key in PHASES):
        results["verdict"] = verdict(results)
    results["timings"]["total"], results["timings"]["estimate"] = round(phases.elapsed, 1), round(phases.estimate, 1)
    _save(out, results)
    if all(key in results for key in PHASES):
        write_figures(results, out)
    phases.finish()
    return results


def _save(out: Path, results: dict) -> None:
    """results.json, replaced atomically: a run killed while writing keeps the previous file (which a run of
    some phases may have taken hours to fill)."""
    atomic.write_text(out / "results.json", json.dumps(results, indent=1, default=str))


def check_phases(only: Sequence[str]) -> tuple[str, ...]:
    """The phases named in ``only``, in the study's order; a one-line ValueError for an unknown or empty list."""
    unknown = [name for name in only if name not in PHASES]
    if unknown or not only:
        raise ValueError(f"phases must be some of {', '.join(PHASES)}; got {', '.join(only) or 'none'}")
    return tuple(name for name in PHASES if name in only)


def _stored(out: Path, cfg: RealLMConfig) -> dict:
    """The results.json a run of some phases adds to, checked against ``cfg`` (one-line errors)."""
    path = out / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"running only some phases adds to {path}, which cannot be read: {e}") from None
    stored = {k: v for k, v in results.get("config", {}).items() if k != "n_prompts"}
    wanted = {k: v for k, v in json.loads(json.dumps(asdict(cfg), default=str)).items() if k != "n_prompts"}
    if stored != wanted:
        differ = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise ValueError(f"{path} was written with another configuration ({', '.join(differ)} differ); "
                         "only n_prompts may change when running some phases")
    results.setdefault("timings", {})
    return results


def _tops(results: dict, top_n: int) -> dict:
    """Each method's top heads, from the phases present."""
    tops: dict = {}
    if "function_vectors" in results:
        tops["function_vectors"] = [tuple(h) for h in results["function_vectors"]["top"][:top_n]]
    if "patching" in results:
        for kind in ("relation", "query"):
            tops[kind] = [tuple(h) for h in results["patching"][kind]["top"][:top_n]]
    if "templates" in results:
        tops["pairwise"] = [(r["layer"], r["head"]) for r in results["templates"]["top"]]
    return tops


def summary(results: dict) -> str:
    """The study's numbers with their 95% intervals over prompts, in a few lines."""
    r, p, fv, c = results["recall"], results["patching"], results["function_vectors"], results["causal"]
    lines = ["recall (top-1 accuracy, 95% bootstrap interval over prompts):"]
    for k, s in r["by_k"].items():
        lines.append(f"  k={k}: {s['accuracy']:.3f} [{s.get('lo', float('nan')):.3f}, {s.get('hi', float('nan')):.3f}]"
                     f" on {s['n_prompts']} prompts")
    if r.get("named"):
        s = r["named"]
        lines.append(f"  relation named: {s['accuracy']:.3f} [{s.get('lo', float('nan')):.3f}, "
                     f"{s.get('hi', float('nan')):.3f}]")
    for kind in ("relation", "query"):
        top = p[kind].get("top_ci", [])[:3]
        lines.append(f"{kind} swap, head z at the prediction (0 corrupted, 1 clean; {p[kind].get('n_dropped', 0)} "
                     "draws without a swap): " + "; ".join(f"L{t['layer']}H{t['head']} {t['value']:.3f} "
                                                         f"[{t['lo']:.3f}, {t['hi']:.3f}]" for t in top))
    ie, se = torch.tensor(fv["indirect_effect"]), torch.tensor(fv["stderr"])
    lines.append("function vectors (CIE, +-1.96 s.e. over prompts): " + "; ".join(
        f"L{l}H{h} {float(ie[l, h]):.3f} +- {1.96 * float(se[l, h]):.3f}" for l, h in fv["top"][:3]))
    t = results["templates"]
    lines.append(f"templates: {t['n_significant']} of {t['n_heads']} heads pairwise by the null rule; largest edge "
                 f"{t['top'][0]['edge']:+.3f} (L{t['top'][0]['layer']}H{t['top'][0]['head']})")
    for name, test in c.items():
        lines.append(f"causal test on {name}: pairwise template recovers {test['recovered']['pairwise']:.3f}, "
                     f"re-paired null mean {test['null_mean']:.3f}, beats every null: {test['beats_null']}")
    lines.append(f"verdict: {results['verdict']['verdict']}")
    return "\n".join(lines)


def write_figures(results: dict, out: Path) -> list[Path]:
    """heads.png (relation swap | query swap), methods.png (FV effect | pairwise - null), recall.png."""
    from icr_interp.viz.figures import new_figure

    paths = []
    p = results["patching"]
    panels = [("heads.png", [("relation swap: relation inference", p["relation"]["values"]),
                             ("query swap: lookup", p["query"]["values"])], "restored (0 corrupted, 1 clean)"),
              ("methods.png", [("function-vector indirect effect", results["function_vectors"]["indirect_effect"]),
                               ("pairwise - null (prediction row)", results["templates"]["edge"])], "")]
    for name, pair, label in panels:
        fig, axes = new_figure(9, 4.5, ncols=2)
        for ax, (title, values) in zip(axes.flat, pair):
            grid = torch.tensor(values, dtype=torch.float).nan_to_num()
            scale = float(grid.abs().max()) or 1.0  # white at zero
            im = ax.imshow(grid.T.numpy(), aspect="auto", cmap="RdBu_r", origin="lower", vmin=-scale, vmax=scale)
            ax.set(title=title, xlabel="layer", ylabel="head")
            fig.colorbar(im, ax=ax, label=label)
        paths.append(out / name)
        fig.savefig(paths[-1], dpi=100)
    fig, axes = new_figure(5, 3.5)
    ax = axes.flat[0]
    by_k = results["recall"]["by_k"]
    ax.plot([int(k) for k in by_k], [v["accuracy"] for v in by_k.values()], "o-", label="in context (k pairs)")
    if results["recall"]["named"]:
        ax.axhline(results["recall"]["named"]["accuracy"], color="k", ls="--", label="relation named")
    ax.set(xlabel="k", ylabel="top-1 accuracy", ylim=(0, 1))
    ax.legend()
    paths.append(out / "recall.png")
    fig.savefig(paths[-1], dpi=100)
    return paths
