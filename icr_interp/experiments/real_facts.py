"""Real facts: where attention goes for shared- and private-answer relations of a real knowledge base.

One run of ``case_studies/real_facts.py`` (:func:`run_one`): :func:`icr_interp.run` of a config, with the query
row's mass by role, the template scores and the accuracy on the scored prompts split by relation group --
relations that share answers with another ("shared") and the rest ("private", :func:`relation_groups`) -- at
the start and the end, and the fine-tuned model's circuit summary (:func:`patching`). docs/results.md
("Real facts").
"""

import warnings

import torch

from icr_interp.seeds import derive_seed
from icr_interp.analysis.scoring import attention, templates
from icr_interp.analysis.causal import circuit
from icr_interp.experiments import checkpoint_analysis
from icr_interp.pipeline import RunConfig
from icr_interp.pipeline import runner as pipeline
from icr_interp.task import ceiling
from icr_interp.training import trainer as train

ROLES = ("subjects", "answers", "bos", "query")  # where the query row's mass goes
SCORES = ("pairwise", "pairwise_null", "p_value", "balance", "pair_mass", "best")


def relation_groups(kb) -> dict[str, list[int]]:
    """Relations sharing an answer with another relation ("shared"), and the others ("private")."""
    sets = kb.answer_sets()
    shared = [r for r, a in enumerate(sets) if any(a & b for q, b in enumerate(sets) if q != r)]
    return dict(shared=shared, private=[r for r in range(kb.n_relations) if r not in shared])


@torch.no_grad()
def by_group(model, task, batch, groups: dict) -> dict:
    """Per relation group (and "all"): prompts, accuracy, ceiling, query-row mass by role, template scores."""
    rows = attention.query_rows(model, batch)  # [layer head batch pos]
    head = templates.score_rows(rows, batch.layout)  # picks the head that matters on the whole batch
    rows = rows[head.layer, head.head]  # [batch pos]
    right = (train.batch_logits(model, batch).argmax(-1) == batch.answers).float()
    best = ceiling.ceiling(task, batch)
    out = {}
    for name, rels in dict(all=list(range(task.kb.n_relations)), **groups).items():
        mask = torch.isin(batch.relations, torch.tensor(rels, dtype=torch.long))
        entry = dict(relations=[task.kb.relations[r] for r in rels], n_prompts=int(mask.sum()))
        if mask.any():
            sub = batch[mask]
            mass = templates.RoleMass.of(rows[mask], sub.layout)
            scores = templates.score_rows(rows[mask], sub.layout).headline()
            entry.update(accuracy=float(right[mask].mean()), ceiling=float(best[mask].mean()),
                         subjects=float(mass.subject.sum(-1).mean()), answers=float(mass.answer.sum(-1).mean()),
                         bos=float(mass.bos.mean()), query=float(mass.query.mean()), **{k: scores[k] for k in SCORES})
        out[name] = entry
    return out


def patching(model, task, n_prompts: int, seed_: int) -> dict:
    """Relation and query swaps on the fine-tuned model: prompts kept / dropped, the verdict."""
    batch, corrupt_seed = checkpoint_analysis.probe_prompts(task, n_prompts, seed_)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = circuit.circuit_summary(model, task, batch, seed=corrupt_seed)
    swap = task.corrupt_pairs(batch, "relation", seed=corrupt_seed)  # the summary's own pairs (same seed)
    same = (swap.clean.tokens == swap.corrupted.tokens).all(1)  # e.g. capital <-> largest city, all pairs equal
    counts = {f"{kind}_{c}": summary.baselines[job][c] for job, kind in circuit.CORRUPTION_OF.items()
              for c in ("n_prompts", "n_dropped")}  # the relation swap and the query swap: patched / left out
    return dict(n_prompts=n_prompts, verdict=summary.verdict, reliable=summary.reliable, reason=summary.reason,
                **counts, relation_swap_same_prompt=int(same.sum()),
                relation_swap_same_target=int((same & (swap.clean.answers == swap.corrupted.answers)).sum()),
                shares={row.component.key: dict(relation=row.relation, lookup=row.lookup) for row in summary.rows},
                warnings=sorted({str(w.message) for w in caught}))


def run_one(cfg: RunConfig, groups: dict, n_patch: int) -> dict:
    task, start_model = pipeline.build(cfg)  # the model run() starts from (same config, same seeds)
    scored = task.sample(cfg.eval.n_template, seed=derive_seed(cfg.seed, "templates"))  # the prompts run() scores
    start_groups = by_group(start_model, task, scored, groups)
    res = pipeline.run(cfg)
    return dict(k=cfg.task.n_pairs, seed=cfg.seed, start=cfg.model.start, init_tilt=cfg.model.init_tilt,
                construction=res.model.icr_config.construction, n_eval=res.after["n_prompts"],
                accuracy=dict(start=res.before["accuracy"], end=res.after["accuracy"], ceiling=res.after["ceiling"]),
                templates=dict(start=res.before["templates"], end=res.after["templates"]),
                groups=dict(start=start_groups, end=by_group(res.model, res.task, scored, groups)),
                patching=patching(res.model, res.task, n_patch, cfg.seed) if n_patch else None,
                run_seconds=res.metrics["seconds"])
