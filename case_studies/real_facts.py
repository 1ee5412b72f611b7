"""Real facts: where attention goes for shared- and private-answer relations of the country base.

    python case_studies/real_facts.py --ks 3 --seeds 0 1 2 --starts answer subject

The built-in base (or ``--csv``) through ``icr_interp.run``, default fine-tuning, one run per (k, start, seed):
held-out accuracy at start and end against the Bayes ceiling, the headline template scores, and on the scored
prompts split by relation group -- relations sharing answers with another ("shared") and the rest ("private")
-- the query row's mass by role, the pairwise score and its null, the accuracy.  The fine-tuned model is then
patched (relation / query swaps, ``circuit_summary``).  docs/results.md ("Real facts").
"""

import itertools
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Parser, out_dir, positive, save_figure, seed, setup_threads, write_json  # noqa: E402

from icr_interp import RunConfig, run  # noqa: E402

from icr_interp.analysis import attention

from icr_interp.task import ceiling

from icr_interp.analysis import circuit

from icr_interp.pipeline import runner as pipeline

from icr_interp.experiments import checkpoint_analysis as probing
from icr_interp import seeds, viz  # noqa: E402
from icr_interp.analysis import templates
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
    batch, corrupt_seed = probing.probe_prompts(task, n_prompts, seed_)
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
    scored = task.sample(cfg.eval.n_template, seed=seeds.derive_seed(cfg.seed, "templates"))  # the prompts run() scores
    start_groups = by_group(start_model, task, scored, groups)
    res = run(cfg)
    return dict(k=cfg.task.n_pairs, seed=cfg.seed, start=cfg.model.start, init_tilt=cfg.model.init_tilt,
                construction=res.model.icr_config.construction, n_eval=res.after["n_prompts"],
                accuracy=dict(start=res.before["accuracy"], end=res.after["accuracy"], ceiling=res.after["ceiling"]),
                templates=dict(start=res.before["templates"], end=res.after["templates"]),
                groups=dict(start=start_groups, end=by_group(res.model, res.task, scored, groups)),
                patching=patching(res.model, res.task, n_patch, cfg.seed) if n_patch else None,
                run_seconds=res.metrics["seconds"])


def figure(runs: list[dict], path: Path) -> None:
    """Mean query-row mass by role (over seeds, first k), start vs end; one panel per start and relation group."""
    starts, k = sorted({r["start"] for r in runs}), runs[0]["k"]
    fig, axes = viz.new_figure(7.5, 2.6 * len(starts), nrows=len(starts), ncols=2, sharey=True)
    axes[0, 0].set_ylim(0, 1)
    colors = [viz.ROLE_COLORS[c] for c in ("s", "a", "<bos>", "query")]
    for i, start in enumerate(starts):
        sel = [r for r in runs if r["start"] == start and r["k"] == k]
        for ax, group in zip(axes[i], ("shared", "private")):
            for x, when in enumerate(("start", "end")):
                mass = [sum(r["groups"][when][group].get(role, 0.0) for r in sel) / len(sel) for role in ROLES]
                ax.bar([x * 5 + n for n in range(4)], mass, color=colors, edgecolor="black" if x else None)
            ax.set_xticks([1.5, 6.5], ["start", "fine-tuned"])
            ax.set_title(f"{start} start: {group}-answer relations (k={k}, {len(sel)} seeds)", fontsize=8)
        axes[i, 0].set_ylabel("query-row mass")
    axes[0, 1].legend(axes[0, 1].patches[:4], ROLES, fontsize=7)
    save_figure(fig, path)


def main(argv=None) -> int:
    p = Parser(prog="real_facts.py", description=__doc__.splitlines()[0])
    p.add_argument("--csv", help="a (subject, relation, answer) CSV; default: the built-in country base")
    p.add_argument("--ks", type=positive, nargs="+", default=[3])
    p.add_argument("--seeds", type=seed, nargs="+", default=[0, 1, 2])
    p.add_argument("--starts", nargs="+", choices=("answer", "subject", "sink"), default=["answer", "subject"])
    for flag, kind, default in (("--init-tilt", float, None), ("--steps", int, None), ("--n-samples", positive, None),
                                ("--n-eval", positive, 1024), ("--n-template", positive, 512),
                                ("--n-patch", int, 256)):  # None: ModelConfig's / TrainConfig's; --n-patch 0: skip
        p.add_argument(flag, type=kind, default=default)
    p.add_argument("--threads", type=positive, default=1)
    p.add_argument("--out", default="case_studies/results/real_facts")
    args = p.parse_args(argv)
    setup_threads(args.threads)
    out = out_dir(p, args.out)
    base_kb = {"knowledge.csv": args.csv} if args.csv else {"knowledge.builtin": "countries"}
    options = {**base_kb, "eval.n_prompts": args.n_eval, "eval.n_template": args.n_template,
               "train.steps": args.steps, "train.n_samples": args.n_samples, "model.init_tilt": args.init_tilt}
    try:
        base = RunConfig(name="real_facts").with_overrides(**{k: v for k, v in options.items() if v is not None})
        groups = relation_groups(kb := base.knowledge.build(0))
    except (OSError, ValueError) as e:
        p.error(str(e))
    runs = []
    for k, start, s in itertools.product(args.ks, args.starts, args.seeds):
        runs.append(r := run_one(base.with_overrides(seed=s, **{"task.n_pairs": k, "model.start": start}), groups,
                                 args.n_patch))
        a, g = r["accuracy"], r["groups"]["end"]
        print(f"k={k} {start} seed {s}: accuracy {a['start']:.3f} -> {a['end']:.3f} (ceiling {a['ceiling']:.3f}); "
              f"answer mass at end: " + ", ".join(f"{n} {g[n].get('answers', 0):.2f}" for n in groups), flush=True)
    names = {n: [kb.relations[r] for r in rs] for n, rs in groups.items()}
    write_json(out / "summary.json", dict(args=vars(args), knowledge=args.csv or "builtin:countries", groups=names,
                                          runs=runs))
    figure(runs, out / "real_facts.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
