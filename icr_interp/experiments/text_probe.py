"""The probes on a real language model: a named pretrained LM, a knowledge base and prompt templates.

``probes/patching.py --model NAME --csv FILE --k K`` (or ``--builtin NAME``) runs the same analyses and
writes the same report as on a checkpoint; this module holds what differs, so the scripts stay thin:

* :func:`load_subject` loads the model (:func:`icr_interp.model.pretrained_lm.load_pretrained_lm`), the
  knowledge base and the text task (:class:`icr_interp.task.text.TextICRecallTask`), and wraps them as a
  :class:`ModelSubject` -- the three things a report reads from a checkpoint (model, task, metrics) plus a name;
* :func:`text_prompts` samples the prompts (seeded like a checkpoint's probe, ``derive_seed(S, "analysis")``)
  after checking their memory estimate, measured on a first sample since text prompts have no fixed length;
* :func:`report_layers` picks the layers a report draws for a deep model: those of the heads whose prediction
  row beats its pairing null (drawing all 30 layers of SmolLM2 would bury them), and says when none does;
* :func:`scores_summary` prints the template scores of 270 heads in a dozen lines;
* :func:`evaluation_summary` is what a reader needs from an evaluation (accuracy with its interval, chance, the
  ceiling explained).

The probe itself, phase by phase with its time estimate, is :mod:`icr_interp.experiments.model_probe`.
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
    task = TextICRecallTask(kb, model, n_pairs=n_pairs, pair_template=pair_template,
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


def text_prompts(subject: ModelSubject, n_prompts: int, seed: int, device: str = "cpu",
                 corruptions: tuple[str, ...] = ("relation", "query")):
    """``(batch, corruption_seed)``: ``n_prompts`` prompts from ``derive_seed(seed, "analysis")`` and the seed
    of their corruptions, refused in one line (before sampling them all) if their analyses would not fit.

    The prompts are those of the stream that have a layout-keeping corruption of every kind in ``corruptions``
    (:meth:`~icr_interp.task.text.TextICRecallTask.sample_corruptible`), so each corruption keeps every prompt
    asked for; a warning says how many drawn prompts were skipped and which relations prevented them.  With
    ``corruptions=()`` they are the stream's first ``n_prompts`` (nothing selected).
    """
    from icr_interp.task import limits

    probe = subject.task.sample(min(n_prompts, 8), seed=derive_seed(seed, "analysis"))
    limits.check_bytes(prompt_bytes(subject.model, n_prompts, probe.tokens.shape[1] + 8),
                       f"analysing {n_prompts} prompts")
    if corruptions:
        batch, _ = subject.task.sample_corruptible(n_prompts, tuple(corruptions), seed=derive_seed(seed, "analysis"),
                                                   device=device)
    else:
        batch = subject.task.sample(n_prompts, seed=derive_seed(seed, "analysis"), device=device)
    return batch, derive_seed(seed, "corrupt")


def _edges(scores) -> list[dict]:
    """Every head's row of ``scores.to_dict()["per_head"]`` with its ``edge``: the pairing effect in attention
    mass where the scores give it (``effect_mass``), else pairwise - pairwise null."""
    return [dict(r, edge=r.get("effect_mass", r["pairwise"] - r["pairwise_null"])) for r in scores.to_dict()["per_head"]]


RULE = "p <= 0.01 against the re-paired null and edge >= 0.05"  # the rule's words where the scores do not say


def report_layers(scores, n: int = REPORT_LAYERS) -> tuple[list[int], str]:
    """The layers a report of a deep model draws, and one line saying why those.

    The layers of the heads whose prediction row is "pairwise" by the pairing-null rule
    (:func:`icr_interp.analysis.scoring.templates.score_templates`: ``best == "pairwise"``, i.e. it beats its re-paired
    null), those with the largest edge (pairwise - null) first, up to ``n``.  Where no head beats its null the
    note says so, and the ``n`` layers of the largest edges are drawn only to show what the rows look like.
    A model with ``n`` layers or fewer is drawn whole.
    """
    rows = _edges(scores)
    n_layers = 1 + max(r["layer"] for r in rows)
    if n_layers <= n:
        return list(range(n_layers)), f"every layer ({n_layers}) is drawn"
    ranked = sorted(rows, key=lambda r: -r["edge"])
    significant = [r for r in ranked if r["best"] == "pairwise"]
    pool = significant or ranked
    layers = list(dict.fromkeys(r["layer"] for r in pool))[:n]
    if significant:
        which = f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, sorted(layers)))}"
        return sorted(layers), (f"{which}, holding the heads whose prediction row beats its pairing null "
                                f"({len(significant)} head{'s' if len(significant) != 1 else ''} in all)")
    return sorted(layers), (f"no head's prediction row beats its pairing null (largest edge {ranked[0]['edge']:+.3f}, "
                            f"L{ranked[0]['layer']}H{ranked[0]['head']}); layers {', '.join(map(str, sorted(layers)))} "
                            "are drawn only as those of the largest edges, which are not significant")


def scores_summary(scores, top: int = 10) -> str:
    """The template scores of a deep model in a few lines (the full table is in scores.json).

    How many heads are "pairwise" by the null rule, the largest edge (pairwise - re-paired null), the ``top``
    heads by edge, and the starred head with why it is the one the headline reports.
    """
    rows = sorted(_edges(scores), key=lambda r: -r["edge"])
    d = scores.to_dict()
    pairwise = [r for r in rows if r["best"] == "pairwise"]
    lines = [f"template scores of {len(rows)} heads' prediction rows on {d['n_examples']} prompts: "
             f"{len(pairwise)} pairwise by the null rule ({d.get('pairing_rule', RULE)}); "
             f"largest edge {rows[0]['edge']:+.3f} at L{rows[0]['layer']}H{rows[0]['head']}",
             f"top {min(top, len(rows))} heads by edge:",
             f"  {'head':<7} {'pairwise':>8} {'null':>6} {'edge':>7} {'p':>6} {'pair mass':>9}  best"]
    star = (d["layer"], d["head"])
    shown = rows[:top] + [r for r in rows[top:] if (r["layer"], r["head"]) == star]
    for r in shown:
        mark = "*" if (r["layer"], r["head"]) == star else " "
        lines.append(f" {mark}{'L%dH%d' % (r['layer'], r['head']):<7} {r['pairwise']:>8.3f} "
                     f"{r['pairwise_null']:>6.3f} {r['edge']:>+7.3f} {r['p_value']:>6.3f} {r['pair_mass']:>9.3f}  "
                     f"{r['best']}")
    lines.append("edge = " + ("the pairing effect in attention mass" if "effect_mass" in rows[0] else
                              "pairwise - re-paired null") + "; every head and column: scores.json")
    lines.append(f"* L{star[0]}H{star[1]}: the head the headline scores reports -- by default the last layer's head "
                 "with the most attention on the context pairs (pair mass), not a head chosen by its edge")
    return "\n".join(lines)


@dataclass(frozen=True)
class EvaluationSummary:
    """What a reader needs from an evaluation of a real LM on text prompts (``print`` it)."""

    accuracy: float  # top-1 accuracy of the answer's first token
    n_correct: int
    n_prompts: int
    low: float  # 95% Wilson interval of the accuracy
    high: float
    chance: float  # one over the number of distinct answers
    n_answers: int
    ceiling: float  # Bayes-optimal accuracy on the same prompts (icr_interp.task.ceiling)
    loss: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def __str__(self) -> str:
        return (f"top-1 accuracy {self.accuracy:.3f} ({self.n_correct} of {self.n_prompts} prompts; 95% CI "
                f"{self.low:.3f}-{self.high:.3f}); chance {self.chance:.4f} (1 of {self.n_answers} answers); "
                f"loss {self.loss:.2f} nats\n"
                f"ceiling {self.ceiling:.3f}: the best accuracy any model could reach on these prompts -- below 1 "
                f"where a context fits more than one relation and the query's answers differ")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre, half = p + z * z / (2 * n), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def evaluation_summary(model, task, n_prompts: int = 64, seed: int = 0) -> EvaluationSummary:
    """:func:`icr_interp.training.trainer.evaluate` of ``model`` on ``task``, as a readable summary: accuracy
    with its 95% interval, chance and the ceiling explained (not the raw dict and its attention list)."""
    from icr_interp.training.trainer import evaluate

    ev = evaluate(model, task, n_prompts=n_prompts, seed=seed)
    k = round(ev["accuracy"] * n_prompts)
    n_answers = int(task.kb.n_answers)
    return EvaluationSummary(ev["accuracy"], k, n_prompts, *wilson(k, n_prompts), 1.0 / n_answers, n_answers,
                             ev["ceiling"], ev["loss"])
