"""One-call reports of a model on a batch: compute what is needed, then render it.

:func:`save_report` reads the attention patterns of a batch (and takes
template scores and patching results as given); :func:`full_report` also
computes the scores and the role patching.  Both hand precomputed numbers to
:mod:`icr_interp.viz.report`, which only renders.  For a checkpoint, prefer
``icr_interp.experiments.checkpoint_analysis.patching_report`` (accuracy, scores table, patching,
circuit summary) or ``probes/patching.py CHECKPOINT --out DIR``.
"""

import os
from pathlib import Path

from icr_interp.analysis.attention import query_row, resolve_layer
from icr_interp.tl.compat import TLModel
from icr_interp.task.prompts import Batch, ICRecallTask
from icr_interp.viz import report
from icr_interp.viz.labels import role_labels, slot_labels, vocab_of
from icr_interp.viz.views import gather_slots, layer_pattern, pattern_view
from icr_interp.task.vocab import Vocabulary


def save_report(path: str | os.PathLike, model: TLModel, batch: Batch, *, scores=None, patching=None,
                vocab: ICRecallTask | Vocabulary | None = None, example: int = 0, layers: list[int] | None = None,
                max_examples: int = 32, title: str = "IC-recall attention report") -> Path:
    """Write one self-contained HTML report (no network needed to view it).

    Contents: the model and batch, the circuitsvis attention view of ``example``
    for each layer (query row highlighted), the query-row attention per layer
    and head (mean row as a table and bars, per-example heatmap), template
    scores (a table) and patching heatmaps, all figures as base64 PNGs.

    Args:
        path: the HTML file; written atomically.
        model: any HookedTransformer.
        batch: prompts with their layout.
        scores: template scores (:class:`~icr_interp.analysis.templates.TemplateScores`, its dict, or any dict).
        patching: patching results (a dict or object with ``to_dict()``; see
            :func:`~icr_interp.viz.patching_panels`).
        vocab: a task or vocabulary for token strings (``None``: token ids).
        example: the example shown in the attention view.
        layers: layers to show (default: all).
        max_examples: rows in the per-example query-attention heatmap.
        title: page title.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"report path is a directory: {path}")
    if not 0 <= example < len(batch):
        raise IndexError(f"example {example} out of range for a batch of {len(batch)}")
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [resolve_layer(n_layers, layer) for layer in layers]
    labels = role_labels(vocab, batch, example)
    query_pos = int(batch.layout.query_pos[example])
    cpu = batch.to("cpu")
    views, rows = [], []
    for layer in layers:
        pattern = layer_pattern(model, batch.tokens, layer)  # [batch head dest src]
        for kind, what in (("heads", "every head, query row only"), ("query", "the prompt coloured by the query row")):
            view = pattern_view(pattern[example], labels, query_pos, layer=layer, kind=kind, rows="query")
            views.append((f"Layer {layer}: {what} (1 prompt: example {example} of {len(batch)})", view))
        rows.append((layer, gather_slots(query_row(pattern, cpu.layout.query_pos), cpu)))  # [batch head slot]
    sections = [report.summary_section(batch_info(model, batch, vocab, example)),
                report.attention_section(views, intro=VIEW_INTRO)]
    sections += [report.query_rows_section(r, slot_labels(batch), layer, max_examples) for layer, r in rows]
    if scores is not None:
        sections.append(report.scores_section(scores, len(batch)))
    if patching is not None:
        sections.append(report.patching_section(patching))
    return report.write_report(path, title, sections)


VIEW_INTRO = ("Colours are scaled to the query row's largest weight and every other destination row is blanked, "
              "so the row that matters is the one coloured; click a head to zoom, hover a cell for its value.")


def batch_info(model: TLModel, batch: Batch, vocab, example: int) -> dict:
    """Plain facts about the model and the prompts, for :func:`~icr_interp.viz.report.summary_section`."""
    cfg = model.cfg
    info = {"layers": cfg.n_layers, "heads": cfg.n_heads, "d_model": cfg.d_model, "prompts": len(batch),
            "context pairs": batch.layout.subject_pos.shape[1]}
    icr = getattr(model, "icr_config", None)
    if icr is not None:
        info["memory"] = icr.construction or icr.memory
    voc = vocab_of(vocab)
    r, answer = int(batch.relations[example]), batch.answers[example].cpu()
    target = voc.to_str(answer) if voc is not None else str(int(answer))
    kb = getattr(vocab, "kb", None)
    relation = kb.relations[r] if kb is not None else voc.names[voc.relation_token(r)] if voc is not None else f"{r}"
    info[f"example {example}"] = " ".join(role_labels(vocab, batch, example))
    info[f"example {example}: hidden relation"] = relation
    info[f"example {example}: answer"] = target
    return info


def full_report(path: str | os.PathLike, model: TLModel, task: ICRecallTask, batch: Batch, *,
                corruptions: tuple[str, ...] = ("relation", "query"), seed: int = 0, **options) -> Path:
    """Compute template scores and role patching for ``batch``, then :func:`save_report` them.

    Scores come from :func:`icr_interp.analysis.templates.score_templates`; for every
    corruption kind, :func:`icr_interp.analysis.patching.patch_by_role` (hook x role)
    and :func:`~icr_interp.analysis.patching.patch_pattern_by_role` (query-row pattern x
    source role) on ``task.corrupt(batch, kind, seed)``.
    """
    from icr_interp.analysis import patching, templates  # analyses sit upstream of views; import when used

    scores = templates.score_templates(model, batch)
    results = {}
    for kind in corruptions:
        corrupted = task.corrupt(batch, kind, seed=seed)
        results[f"{kind} swap: hook x role"] = patching.patch_by_role(model, batch, corrupted).to_dict()
        results[f"{kind} swap: query-row pattern x source role"] = patching.patch_pattern_by_role(
            model, batch, corrupted).to_dict()
    return save_report(path, model, batch, vocab=task, scores=scores, patching=results or None, **options)
