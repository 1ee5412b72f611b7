"""The probes on a real language model: a named pretrained LM, a knowledge base and prompt templates.

``probes/patching.py --model NAME --csv FILE --k K`` (or ``--builtin NAME``) runs the same analyses and
writes the same report as on a checkpoint; this module holds what differs, so the scripts stay thin:

* :func:`load_subject` loads the model (:func:`icr_interp.model.pretrained_lm.load_pretrained_lm`), the
  knowledge base and the text task (:class:`icr_interp.task.text.TextICRecallTask`), and wraps them as a
  :class:`ModelSubject` -- the three things a report reads from a checkpoint (model, task, metrics) plus a name;
* :func:`text_prompts` samples the prompts (seeded like a checkpoint's probe, ``derive_seed(S, "analysis")``)
  after checking their memory estimate, measured on a first sample since text prompts have no fixed length;
* :func:`report_layers` picks the layers a report draws for a deep model: those of the heads whose prediction
  row beats its pairing null by the most (drawing all 30 layers of SmolLM2 would bury them).
"""

from dataclasses import dataclass, field
from pathlib import Path

from icr_interp.seeds import derive_seed

REPORT_LAYERS = 3  # layers a report of a deep model draws


@dataclass
class ModelSubject:
    """A model and its task, standing where a report expects a checkpoint (``model``, ``task``, ``metrics``)."""

    model: object  # a TransformerLens model with its tokenizer
    task: object  # a TextICRecallTask
    path: str  # what the report names it by (the model's name)
    metrics: dict = field(default_factory=dict)  # none recorded: a pretrained model was not trained here


def check_templates(pair_template: str, query_template: str) -> None:
    """The two templates name their fields (``{s}`` and ``{a}``; ``{s}``) once each: a one-line ValueError else."""
    from icr_interp.task.text_spans import check_template

    check_template(pair_template, ("s", "a"), "--pair-template")
    check_template(query_template, ("s",), "--query-template")


def load_knowledge(csv: Path | None, builtin: str | None):
    """The knowledge base a probe asks for: a CSV of (subject, relation, answer) rows or a built-in base."""
    from icr_interp.task.knowledge import KnowledgeBase

    return KnowledgeBase.from_csv(csv) if csv is not None else KnowledgeBase.builtin(builtin)


def load_subject(name: str, kb, n_pairs: int, pair_template: str, query_template: str,
                 device: str = "cpu") -> ModelSubject:
    """The pretrained LM ``name`` and a text IC-recall task on ``kb`` tokenized by its own tokenizer."""
    from icr_interp.model.pretrained_lm import load_pretrained_lm
    from icr_interp.task.text import TextICRecallTask

    model = load_pretrained_lm(name, device=device)
    task = TextICRecallTask(kb, model.tokenizer, n_pairs=n_pairs, pair_template=pair_template,
                            query_template=query_template)
    return ModelSubject(model, task, name)


def prompt_bytes(model, n_prompts: int, n_pos: int) -> int:
    """Memory the analyses of ``n_prompts`` prompts of ``n_pos`` tokens hold at once (estimate): three caches
    (clean, corrupted, patched) of about 16 ``[batch pos d_model]`` activations and 3 ``[batch head pos pos]``
    patterns per layer, in float32, as for a checkpoint's probe."""
    from icr_interp.task import limits

    cfg = model.cfg
    per_prompt = cfg.n_layers * (16 * n_pos * cfg.d_model + 3 * cfg.n_heads * n_pos**2)
    return limits.prompt_bytes(n_prompts, n_pos) + 3 * limits.FLOAT_BYTES * n_prompts * per_prompt


def text_prompts(subject: ModelSubject, n_prompts: int, seed: int, device: str = "cpu"):
    """``(batch, corruption_seed)``: ``n_prompts`` prompts from ``derive_seed(seed, "analysis")`` and the seed
    of their corruptions, refused in one line (before sampling them all) if their analyses would not fit."""
    from icr_interp.task import limits

    probe = subject.task.sample(min(n_prompts, 8), seed=derive_seed(seed, "analysis"))
    limits.check_bytes(prompt_bytes(subject.model, n_prompts, probe.tokens.shape[1] + 8),
                       f"analysing {n_prompts} prompts")
    batch = subject.task.sample(n_prompts, seed=derive_seed(seed, "analysis"), device=device)
    return batch, derive_seed(seed, "corrupt")


def report_layers(scores, n: int = REPORT_LAYERS) -> list[int]:
    """The ``n`` layers holding the heads whose per-example pairwise score beats its null by the most.

    ``scores`` is :func:`icr_interp.analysis.templates.score_templates`' result; a model with ``n`` layers
    or fewer is drawn whole.
    """
    gain = {}
    for row in scores.to_dict()["per_head"]:
        value = row["pairwise"] - row["pairwise_null"]
        gain[row["layer"]] = max(gain.get(row["layer"], float("-inf")), value)
    if len(gain) <= n:
        return sorted(gain)
    return sorted(sorted(gain, key=lambda layer: -gain[layer])[:n])


def patching_analyses(subject: ModelSubject, batch, kinds: tuple[str, ...], corruption_seed: int, method: str,
                      eval_prompts: int, seed: int) -> tuple[dict, object, str]:
    """``probes/patching.py --model``'s analyses: role patching per corruption kind, the circuit summary by
    layer, and the report page (the attention of :func:`report_layers`), as for a checkpoint."""
    from icr_interp.analysis.circuit import JOB_OF, circuit_summary
    from icr_interp.analysis.templates import score_templates
    from icr_interp.experiments.checkpoint_analysis import role_patching
    from icr_interp.viz.model_report import checkpoint_report

    results = role_patching(subject.model, subject.task, batch, kinds, corruption_seed, method)
    summary = circuit_summary(subject.model, subject.task, batch, seed=corruption_seed,
                              jobs=tuple(JOB_OF[k] for k in kinds), components="layer", source=subject.path)
    layers = report_layers(score_templates(subject.model, batch))
    page = checkpoint_report(subject, batch, results, summary, eval_prompts=eval_prompts, seed=seed, layers=layers,
                             title=f"IC-recall patching report: {subject.path}")
    return results, summary, page
