"""``probes/patching.py --model``: the probe of a real LM as phases that print an estimate and save as they go.

Phases, in order (each printed before it starts with its estimate, and saved to ``out`` when it ends):

1. per corruption (relation swap, query swap), the three parts of the default grid
   (:mod:`icr_interp.experiments.probe_grid`): residual stream x role, attention/MLP output at the
   prediction, every head's z at the prediction -- rewritten into ``patching.json`` after each part;
2. with ``grid="full"``, per corruption, the attribution screen of every head x role and pattern x source
   role with its exact confirmation (``screen.json``);
3. the template scores of every head's prediction row with the pairing null (``scores.json``);
4. the circuit summary by layer (``circuit.json``), with ``circuit=True``;
5. the report (``report.html``, ``patching.png``).

The prompts are sampled once; each corruption keeps the prompts that have one
(``task.corrupt_pairs``) and every result says how many of how many it holds.
"""

from pathlib import Path
from collections.abc import Callable

from icr_interp.experiments import probe_grid as G
from icr_interp.experiments.progress import Phases, calibrate, forward_blocks
from icr_interp.storage.jsonio import json_safe


def _dict(x):
    return x.to_dict() if hasattr(x, "to_dict") else x


def part_summary(kind: str, part: str, result, n_kept: int, n_asked: int, top: int = 5) -> str:
    """A few lines per grid part: its baselines, reliability, and its ``top`` cells by |effect|."""
    d = _dict(result)
    values = [(abs(v), v, c, r) for c, row in zip(d["components"], d["values"]) for r, v in zip(d["roles"], row)
              if v == v]
    best = sorted(values, reverse=True)[:top]
    kept = f"{n_kept} of {n_asked} prompts" + ("" if n_kept == n_asked else f" ({n_asked - n_kept} had no {kind} swap)")
    lines = [f"== {kind} swap, {G.PART_TITLES[part]}: {kept}; 0 = corrupted (logit diff {d['corrupted_value']:.2f}), "
             f"1 = clean ({d['clean_value']:.2f})"]
    if not d.get("reliable", True):
        lines.append(f"   UNRELIABLE: {d.get('reason', '')}")
    if d.get("warnings"):
        lines.append(f"   {len(d['warnings'])} values outside the sane range, e.g. {d['warnings'][0]}")
    lines += [f"   {c.replace('blocks.', 'L').replace('.hook_', ' ').replace('.attn', '')} x {r}: {v:+.3f}"
              for _, v, c, r in best]
    return "\n".join(lines)


def plan_phases(model, batch, pairs: dict, cal, grid: str, circuit: bool, eval_prompts: int) -> dict:
    """``{phase: estimated seconds}``: each patching part by its token-block floor, the rest as forwards."""
    n, n_pos = batch.tokens.shape
    plan = {}
    for kind, (clean, corrupted, _) in pairs.items():
        for part in G.DEFAULT_PARTS:
            plan[f"{kind}: {part}"] = cal.seconds(G.grid_blocks(model, clean, corrupted, *G.part_grid(model, part)))
        if grid == "full":  # forward + backward (~3 forwards), two base runs, ~30 confirmed cells from layer 0
            plan[f"{kind}: screen"] = cal.seconds(forward_blocks(model, len(clean), n_pos, 5 + 30 / max(1, n_pos)))
    plan["template scores"] = cal.seconds(forward_blocks(model, n, n_pos, 1))
    if circuit:
        n_parts = len(G.part_grid(model, "prediction")[0])
        plan["circuit summary"] = plan[f"{next(iter(pairs))}: prediction"] * len(pairs) + cal.seconds(
            forward_blocks(model, n, n_pos, n_parts))
    plan["report"] = cal.seconds(forward_blocks(model, eval_prompts, n_pos, 1) + forward_blocks(model, n, n_pos, 3))
    return plan


def run_model_probe(subject, batch, kinds: tuple[str, ...], corruption_seed: int, out: Path, info: dict, *,
                    grid: str = "default", method: str = "exact", eval_prompts: int = 64, seed: int = 0,
                    circuit: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Every phase of the probe (module docstring); returns ``{"results", "scores", "summary", "written"}``."""
    from icr_interp.analysis.causal.circuit import JOB_OF, circuit_summary
    from icr_interp.analysis.causal.patching import attribution_patch
    from icr_interp.analysis.scoring.templates import score_templates
    from icr_interp.experiments import text_probe
    from icr_interp.storage.atomic import write_bytes, write_json, write_text
    from icr_interp.viz import figures, grids
    from icr_interp.viz.model_report import checkpoint_report

    if grid not in ("default", "full"):
        raise ValueError(f"grid must be 'default' or 'full', got {grid!r}")
    model, task, n = subject.model, subject.task, len(batch)
    pairs = {kind: task.corrupt_pairs(batch, kind, seed=corruption_seed) for kind in kinds}
    for kind, (clean, _, _) in pairs.items():
        if len(clean) == 0:
            raise ValueError(f"none of the {n} prompts has a {kind} swap that keeps its token spans")
    results = {kind: dict(n_prompts=len(p[0]), n_requested=n, n_dropped=p[2]) for kind, p in pairs.items()}
    written: dict[str, Path] = {}

    def save_patching(complete: bool = False) -> None:
        data = dict(**info, grid=grid, complete=complete, timings=dict(phases.timings), estimate=phases.plan,
                    results={k: {name: _dict(v) for name, v in r.items()} for k, r in results.items()})
        written["patching.json"] = write_json(out / "patching.json", json_safe(data))

    cal = calibrate(model, batch.tokens)
    phases = Phases(plan_phases(model, batch, pairs, cal, grid, circuit, eval_prompts), log=log)
    phases.announce(cal)
    say = phases.log

    def patch(clean, corrupted, part):
        if method == "exact":
            return G.run_part(model, clean, corrupted, part, log=say)
        return attribution_patch(model, clean, corrupted, hooks=G.part_grid(model, part)[0],
                                 roles=G.part_grid(model, part)[1])

    for kind, (clean, corrupted, _) in pairs.items():
        for part in G.DEFAULT_PARTS:
            results[kind][part] = phases.run(f"{kind}: {part}", lambda: patch(clean, corrupted, part))
            save_patching()
            say(part_summary(kind, part, results[kind][part], len(clean), n))
        if grid == "full":
            screen = phases.run(f"{kind}: screen", lambda: G.screen_and_confirm(model, clean, corrupted, seed=seed))
            results[kind]["screen"] = screen
            save_patching()
            say(str(screen))
    scores = phases.run("template scores", lambda: score_templates(model, batch))
    written["scores.json"] = write_json(out / "scores.json", json_safe(dict(**info, **scores.to_dict())))
    layers, note = text_probe.report_layers(scores)
    say(text_probe.scores_summary(scores))
    say(note)
    summary = None
    if circuit:
        summary = phases.run("circuit summary", lambda: circuit_summary(
            model, task, batch, seed=corruption_seed, jobs=tuple(JOB_OF[k] for k in kinds), components="layer",
            source=subject.path))
        written["circuit.json"] = write_json(out / "circuit.json", json_safe(summary.to_dict()))
        say(str(summary))

    def report():
        pngs = [figures.figure_png(grids.plot_probe_grid(
            {p: r[p] for p in G.DEFAULT_PARTS if p in r}, kind, r["n_prompts"], r["n_requested"]), dpi=grids.DPI)
            for kind, r in results.items()]
        written["patching.png"] = write_bytes(out / "patching.png", figures.stack_pngs(pngs))
        page = checkpoint_report(subject, batch, results, summary, eval_prompts=eval_prompts, seed=seed,
                                 layers=layers, layers_note=note, scores=scores,
                                 title=f"IC-recall patching report: {subject.path}")
        written["report.html"] = write_text(out / "report.html", page)

    phases.run("report", report)
    save_patching(complete=True)
    phases.finish()
    return dict(results=results, scores=scores, summary=summary, written=list(written.values()),
                timings=phases.timings, estimate=phases.plan)
