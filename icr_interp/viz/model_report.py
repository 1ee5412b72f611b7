"""One-call reports of a model on a batch: compute what is needed, then render it.

:func:`save_report` reads the attention patterns of a batch (and takes
template scores and patching results as given); :func:`full_report` also
computes the scores and the role patching; :func:`checkpoint_report` is the page
``probes/patching.py`` writes for a checkpoint (held-out accuracy, prompts, attention,
scores, role patching, circuit summary).  All hand precomputed numbers to
:mod:`icr_interp.viz.report`, which only renders.

The attention part (:func:`attention_sections`) shows what matters: each prompt's prediction row (the
query position's attention, where the answer is predicted) aligned by role and captioned with the prompt's
hidden relation and answer, the mean row with its spread, and circuitsvis token views coloured by it.
"""

import os
from pathlib import Path

from icr_interp.analysis.scoring.attention import query_row, resolve_layer
from icr_interp.tl.compat import TLModel
from icr_interp.task.batch import Batch
from icr_interp.task.prompts import ICRecallTask
from icr_interp.task.protocol import PromptTask
from icr_interp.viz import report
from icr_interp.viz.escape import text
from icr_interp.viz.labels import role_labels, slot_labels, slot_positions, vocab_of
from icr_interp.viz.views import gather_slots, layer_pattern, pattern_view
from icr_interp.task.vocab import Vocabulary


def save_report(path: str | os.PathLike, model: TLModel, batch: Batch, *, scores=None, patching=None,
                vocab: PromptTask | Vocabulary | None = None, example: int = 0, layers: list[int] | None = None,
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
        scores: template scores (:class:`~icr_interp.analysis.scoring.templates.TemplateScores`, its dict, or any dict).
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
    sections = [report.summary_section(batch_info(model, batch, vocab, example)),
                *attention_sections(model, batch, vocab, example=example, layers=layers, max_examples=max_examples)]
    if scores is not None:
        sections.append(report.scores_section(scores, len(batch)))
    if patching is not None:
        sections.append(report.patching_section(patching))
    return report.write_report(path, title, sections)


VIEW_INTRO = ("The prediction row is the attention of the query position, where the model predicts the answer; "
              "each row below is one prompt's, aligned by role (s1 = first context subject, a1 = its answer), "
              "then the mean over every prompt with its standard deviation.  The token views colour each prompt "
              "by its prediction row, one colouring per head.")
SHOWN_ROWS = 8  # prompts whose prediction rows are shown one by one
SHOWN_VIEWS = 3  # prompts drawn as circuitsvis token views


def prompt_captions(batch: Batch, vocab, n: int) -> list[str]:
    """``relation -> answer`` of the first ``n`` prompts (ids where there is no vocabulary)."""
    voc, kb = vocab_of(vocab), getattr(vocab, "kb", None)
    out = []
    for i in range(min(n, len(batch))):
        r, answer = int(batch.relations[i]), batch.answers[i].cpu()
        relation = kb.relations[r] if kb is not None else voc.names[voc.relation_token(r)] if voc is not None else r
        out.append(f"{relation} \u2192 {voc.to_str(answer) if voc is not None else int(answer)}")
    return out


def slot_tokens(batch: Batch, vocab, n: int) -> list[list[str]] | None:
    """The token at every role slot of the first ``n`` prompts (None without a vocabulary)."""
    voc = vocab_of(vocab)
    if voc is None:
        return None
    cpu = batch.to("cpu")
    ids = cpu.tokens.gather(1, slot_positions(cpu).clamp_min(0))[:n]  # [n slot]
    return [voc.to_str(row) for row in ids]


def attention_sections(model: TLModel, batch: Batch, vocab=None, *, example: int = 0, layers: list[int] | None = None,
                       max_examples: int = 32, shown_rows: int = SHOWN_ROWS, shown_views: int = SHOWN_VIEWS,
                       note: str = "") -> list[str]:
    """The report's attention: prediction rows by role (each prompt's, then mean +- s.d.), the query rows as
    figures, and circuitsvis token views coloured by the prediction row (prompts ``example`` onward)."""
    if not 0 <= example < len(batch):
        raise IndexError(f"example {example} out of range for a batch of {len(batch)}")
    n_layers = model.cfg.n_layers
    layers = list(range(n_layers)) if layers is None else [resolve_layer(n_layers, layer) for layer in layers]
    cpu, n = batch.to("cpu"), len(batch)
    captions, tokens = prompt_captions(batch, vocab, shown_rows), slot_tokens(batch, vocab, shown_rows)
    picked = list(range(example, min(n, example + shown_views)))
    views, tables_, figures_ = [], [], []
    for layer in layers:
        pattern = layer_pattern(model, batch.tokens, layer)  # [batch head dest src]
        rows = gather_slots(query_row(pattern, cpu.layout.pred_pos), cpu)  # [batch head slot]
        tables_.append(report.prediction_rows_section(rows, slot_labels(batch), layer, captions, tokens))
        figures_.append(report.query_rows_section(rows, slot_labels(batch), layer, max_examples))
        for i in picked:
            view = pattern_view(pattern[i], role_labels(vocab, batch, i), int(cpu.layout.pred_pos[i]), layer=layer,
                                kind="query")
            what = prompt_captions(batch[i:i + 1], vocab, 1)[0]
            views.append((f"Layer {layer}: prompt {i} of {n} ({what}) coloured by its prediction row", view))
    intro = f"<h2>Attention</h2>\n<p>{text(VIEW_INTRO)}</p>" + (f"\n<p><b>Layers shown:</b> {text(note)}</p>"
                                                                  if note else "")
    return [intro, *tables_, report.attention_section(views, heading=None), *figures_]


def checkpoint_report(checkpoint, batch: Batch, results: dict, summary=None, *, title: str, seed: int,
                      eval_prompts: int = 1024, example: int = 0, max_examples: int = 32,
                      layers: list[int] | None = None, layers_note: str = "", scores=None) -> str:
    """The self-contained HTML page of a checkpoint: accuracy, prompts, attention, scores, patching, circuit.

    Computes the held-out accuracy on ``eval_prompts`` fresh prompts (:func:`icr_interp.training.trainer.evaluate`
    seeded by the run's ``seed``) and the template scores of ``batch``; takes the role patching ``results``
    and circuit ``summary`` as given.  The accuracy the checkpoint recorded at training time is shown beside.
    ``checkpoint`` may be anything with ``model``, ``task``, ``metrics`` and ``path`` (a real LM:
    :class:`icr_interp.experiments.text_probe.ModelSubject`); ``layers`` limits the attention drawn and
    ``layers_note`` says why those; ``scores`` (template scores already computed for ``batch``) saves a forward.
    """
    from icr_interp.analysis.scoring.templates import score_templates
    from icr_interp.training.trainer import evaluate

    model, task = checkpoint.model, checkpoint.task
    evaluation = evaluate(model, task, n_prompts=eval_prompts, seed=seed)
    after = checkpoint.metrics.get("after")
    stored = after.get("accuracy") if isinstance(after, dict) else None
    sections = [report.accuracy_section(evaluation, seed, stored if isinstance(stored, float) else None),
                report.summary_section({"checkpoint": str(checkpoint.path), **batch_info(model, batch, task, example)}),
                *attention_sections(model, batch, task, example=example, layers=layers, max_examples=max_examples,
                                    note=layers_note),
                report.scores_section(scores if scores is not None else score_templates(model, batch), len(batch)),
                report.role_patching_section(results, len(batch))]
    if summary is not None:
        sections.append(report.circuit_section(summary))
    return report.render_report(title, sections)


def batch_info(model: TLModel, batch: Batch, vocab, example: int) -> dict:
    """Plain facts about the model and the prompts, for :func:`~icr_interp.viz.report.summary_section`."""
    cfg = model.cfg
    info = {"layers": cfg.n_layers, "heads": cfg.n_heads, "d_model": cfg.d_model, "prompts": len(batch),
            "context pairs": batch.layout.subject_end.shape[1]}
    icr = getattr(model, "icr_config", None)
    if icr is not None:
        info["memory"] = icr.construction or icr.memory
    voc = vocab_of(vocab)
    r, answer = int(batch.relations[example]), batch.answers[example].cpu()
    target = voc.to_str(answer) if voc is not None else str(int(answer))
    kb = getattr(vocab, "kb", None)
    relation = kb.relations[r] if kb is not None else voc.names[voc.relation_token(r)] if voc is not None else f"{r}"
    shown = role_labels(vocab, batch, example)[:int(batch.layout.pred_pos[example]) + 1]  # no padding after
    info[f"example {example}"] = " ".join(shown)
    info[f"example {example}: hidden relation"] = relation
    info[f"example {example}: answer"] = target
    return info


def full_report(path: str | os.PathLike, model: TLModel, task: ICRecallTask, batch: Batch, *,
                corruptions: tuple[str, ...] = ("relation", "query"), seed: int = 0, **options) -> Path:
    """Compute template scores and role patching for ``batch``, then :func:`save_report` them.

    Scores come from :func:`icr_interp.analysis.scoring.templates.score_templates`; for every
    corruption kind, :func:`icr_interp.analysis.causal.patching.patch_by_role` (hook x role)
    and :func:`~icr_interp.analysis.causal.patching.patch_pattern_by_role` (query-row pattern x
    source role) on ``task.corrupt(batch, kind, seed)``.
    """
    from icr_interp.analysis.causal import patching  # analyses sit upstream of views; import when used
    from icr_interp.analysis.scoring import templates

    scores = templates.score_templates(model, batch)
    results = {}
    for kind in corruptions:
        corrupted = task.corrupt(batch, kind, seed=seed)
        results[f"{kind} swap: hook x role"] = patching.patch_by_role(model, batch, corrupted).to_dict()
        results[f"{kind} swap: query-row pattern x source role"] = patching.patch_pattern_by_role(
            model, batch, corrupted).to_dict()
    return save_report(path, model, batch, vocab=task, scores=scores, patching=results or None, **options)
