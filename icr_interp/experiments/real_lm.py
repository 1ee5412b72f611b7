"""The paper's claim on a real language model: does IC-recall run through pairwise attention rows?

Six phases on a pretrained LM (``load_pretrained_lm``) and a text IC-recall task (any knowledge base, any
templates), each a library call, with one JSON of everything and three figures:

a. **recall**: top-1 accuracy against k (``recall_curve``) beside the zero-shot and named-relation baselines;
b. **templates**: every (layer, head) at the prediction position against the pairwise template with its
   pairing null (``score_templates``; the toolkit's rule: ``best == "pairwise"`` needs p <= 0.01 and
   pairwise - null >= 0.05), heads ranked by ``pairwise - pairwise_null``;
c. **patching by head**: each head's clean ``z`` at the prediction position patched into relation-swapped
   prompts (relation inference) and query-swapped ones (lookup), by suffix recomputation
   (:func:`~icr_interp.analysis.suffix_patching.patch_heads`);
d. **function vectors**: every head's causal indirect effect (Todd et al. 2024) and the overlap of the top
   heads of (b), (c) and (d), with what chance would give;
e. **causal template test** (``causal_template_test``) on the top relation-inference heads and on the top
   pairwise heads: what the pairwise template, its re-paired null, answers-only and subjects-only recover;
f. **verdict** on the claim (:func:`verdict`): agrees, partly or disagrees, with the evidence.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Callable

import torch

from icr_interp.analysis.causal_template import causal_template_test
from icr_interp.analysis.function_vectors import function_vector_heads
from icr_interp.analysis.recall import recall_curve
from icr_interp.analysis.suffix_patching import patch_heads
from icr_interp.analysis.templates import score_templates
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
    n_prompts: int = 16  # prompts per analysis (and per k in the recall curve)
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


def phase_patching(model, task: TextICRecallTask, cfg: RealLMConfig) -> dict:
    """(c) Every head's z at the prediction position, relation swap and query swap."""
    out = {}
    for i, kind in enumerate(("relation", "query")):
        pairs = task.sample_pairs(cfg.n_prompts, kind, seed=cfg.seed + 2 + i)
        out[kind] = patch_heads(model, pairs.clean, pairs.corrupted).to_dict()
        out[kind]["n_dropped"] = pairs.n_dropped
    return out


def phase_function_vectors(model, task: TextICRecallTask, cfg: RealLMConfig) -> dict:
    """(d) Causal indirect effect of every head (means over clean prompts, patched into shuffled ones)."""
    pairs = task.sample_pairs(cfg.n_prompts, "shuffle", seed=cfg.seed + 4)
    return function_vector_heads(model, pairs.clean, pairs.corrupted).to_dict()


def phase_causal(model, task: TextICRecallTask, cfg: RealLMConfig, head_sets: dict) -> dict:
    """(e) The causal template test (relation-swap logit difference) on each named set of heads."""
    pairs = task.sample_pairs(cfg.n_prompts, "relation", seed=cfg.seed + 5)
    return {name: causal_template_test(model, pairs.clean, heads=[tuple(h) for h in heads], corrupted=pairs.corrupted,
                                       n_null=cfg.n_null, seed=cfg.seed).to_dict() for name, heads in head_sets.items()}


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


def run_real_lm(model, cfg: RealLMConfig, out: str | Path, progress: Callable[[str], None] = print) -> dict:
    """All phases on ``model``; writes ``results.json`` and the figures into ``out``; returns the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task = TextICRecallTask(cfg.knowledge_base(), model.tokenizer, cfg.k, cfg.pair_template, cfg.query_template)
    results: dict = dict(config=asdict(cfg), excluded=task.excluded, example_prompt=task.prompt_text(
        task.sample(1, seed=cfg.seed), 0), timings={})

    def phase(name: str, fn):
        start = time.perf_counter()
        progress(f"[{name}] ...")
        results[name] = fn()
        results["timings"][name] = round(time.perf_counter() - start, 1)
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str))  # partial results kept
        progress(f"[{name}] done in {results['timings'][name]:.1f} s")

    phase("recall", lambda: recall_curve(model, task, range(cfg.max_k + 1), n_prompts=cfg.n_prompts,
                                         seed=cfg.seed, batch_size=cfg.n_prompts).to_dict())
    phase("templates", lambda: phase_templates(model, task, cfg))
    phase("patching", lambda: phase_patching(model, task, cfg))
    phase("function_vectors", lambda: phase_function_vectors(model, task, cfg))
    n_total = model.cfg.n_layers * model.cfg.n_heads
    tops = dict(function_vectors=[tuple(h) for h in results["function_vectors"]["top"][:cfg.top_n]],
                relation=[tuple(h) for h in results["patching"]["relation"]["top"][:cfg.top_n]],
                query=[tuple(h) for h in results["patching"]["query"]["top"][:cfg.top_n]],
                pairwise=[(r["layer"], r["head"]) for r in results["templates"]["top"]])
    results["overlap"] = {f"{a}_vs_{b}": overlap(tops[a], tops[b], n_total)
                          for a, b in (("function_vectors", "relation"), ("function_vectors", "pairwise"),
                                       ("relation", "pairwise"), ("relation", "query"))}
    phase("causal", lambda: phase_causal(model, task, cfg, dict(relation_heads=tops["relation"][:cfg.top_causal],
                                                               pairwise_heads=tops["pairwise"][:cfg.top_causal])))
    results["verdict"] = verdict(results)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    write_figures(results, out)
    return results


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
