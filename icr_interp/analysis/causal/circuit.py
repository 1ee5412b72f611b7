"""Circuit summary: how much of each job runs through each component.

IC-recall asks the model for two jobs.  *Relation inference* reads the
context pairs and decides which relation produced them; *answer lookup*
combines that relation with the query subject and recalls the answer from the
memory.  Two corruptions move one job each (:meth:`ICRecallTask.corrupt`):

* the **relation swap** keeps every subject and replaces the answers by those
  of another relation -- only relation inference has to change;
* the **query swap** keeps the context and replaces the query subject -- only
  the lookup has to change.

For each component (a hook at the positions of one prompt role) the summary
patches the clean activation into the corrupted run (*denoising*, see
:mod:`icr_interp.analysis.causal.patching`) and reports the normalised logit difference at the
prediction position (the query in toy prompts, the last token in text prompts):
0 = the corrupted run, 1 = the clean run.  A component scoring ~1 for
one corruption carries that job's whole effect; ~0 means the job's
information does not pass through it.  Next to it, the component is
mean-ablated on the clean prompts (as in :mod:`icr_interp.analysis.causal.ablation`) and the
accuracy drop is reported: patching says where a job's *difference* lives,
ablation says what the model *needs*.  (A relation swap keeps the subjects, so
patching the subjects' values moves nothing, yet ablating them can still
destroy recall: the memory needs both members of each pair.)

The default components (``components="memory"``), all in the last layer (the one
whose MLP is the memory) except the query token; "prediction" is the position
whose logits are read (the query s_q itself in toy prompts):

==================  =====================================  ==========
component           hook                                   positions
==================  =====================================  ==========
``subjects``        ``blocks.L.attn.hook_v`` (all heads)   s_i
``answers``         ``blocks.L.attn.hook_v`` (all heads)   a_i
``context``         ``blocks.L.attn.hook_v`` (all heads)   s_i and a_i
``query``           ``blocks.L0.hook_resid_pre`` (first)  s_q
``pattern``         ``blocks.L.attn.hook_pattern``         prediction row, sources s_i and a_i
``attn_out``        ``blocks.L.hook_attn_out``             prediction
``stage_I``         ``blocks.L.mlp.hook_relation``         prediction
``stage_II``        ``blocks.L.hook_mlp_out``              prediction
==================  =====================================  ==========

Components whose hook the model lacks (a memory without stages, an
attention-only model) are skipped.  For a stock model (a pretrained LM, whose
jobs may sit in any layer) ``components="layer"`` has every layer's attention
and MLP output at the prediction position, and ``components="head"`` every
head's output (``hook_z``) there; a list of :class:`Component` is taken as is.  Every example's positions come from its
own ``batch.layout`` (roles from :mod:`icr_interp.task.roles`).

A summary names a circuit only when it can (:mod:`icr_interp.analysis.causal.reliability`):
if the model is at chance on the clean prompts, the verdict says so and names
nothing; if a corruption's clean - corrupted gap is within
:data:`~icr_interp.analysis.causal.reliability.Z` standard errors of zero over the prompts,
that job's shares are declared undefined.  ``summary.reliable`` and
``summary.reason`` say which; normalised shares outside
:data:`~icr_interp.analysis.causal.reliability.NORMALISED_RANGE` are listed in
``summary.warnings``.

Example::

    summary = circuit_summary(model, task, task.sample(256, seed=0))
    print(summary)                     # the table and the verdict
    summary["context", "relation"]     # share of relation inference carried by the pairs' values
"""

import math
import warnings
from dataclasses import dataclass, field

import torch
from jaxtyping import Bool
from torch import Tensor

from icr_interp.analysis.inputs import check_batch
from icr_interp.model import hooks as H
from icr_interp.analysis.causal import ablation

from icr_interp.analysis.causal import reliability

from icr_interp.task import roles
from icr_interp.analysis.causal.ablation import AblationResult
from icr_interp.analysis.scoring.attention import resolve_layer
from icr_interp.tl.compat import TLModel
from icr_interp.analysis.causal.patching import LogitDiff, patch_activations
from icr_interp.analysis.causal.patching.by_role import role_patch, setup
from icr_interp.task.batch import Batch
from icr_interp.task.protocol import PromptTask

JOBS = ("relation", "lookup")  # summary columns: relation inference, answer lookup
CORRUPTION_OF = {"relation": "relation", "lookup": "query"}  # job -> corruption kind that moves it
JOB_OF = {kind: job for job, kind in CORRUPTION_OF.items()}  # corruption kind -> the job it moves
CARRIES = 0.5  # a component "carries" a job when its normalised patching effect is at least this
CONTEXT_GROUP = ("subjects", "answers", "context")  # reported together in the verdict
COMPONENT_SETS = ("memory", "layer", "head")  # circuit_components(by=...)
Z = reliability.Z  # the one reliability threshold (standard errors), defined in icr_interp.analysis.causal.reliability


@dataclass(frozen=True)
class Component:
    """A row of the summary: one hook at the positions of one prompt role."""

    key: str  # short stable name (``summary[key, column]``)
    label: str  # what it is, for tables and the verdict
    hook: str  # full hook name
    role: str  # role whose positions are patched / ablated (an icr_interp.task.roles name)
    head: int | None = None  # the one head patched / ablated (per-head hooks; None: all heads)


def circuit_components(model: TLModel, by: str = "memory") -> list[Component]:
    """The summary's components for ``model``: ``by`` one of :data:`COMPONENT_SETS` (module docstring).

    ``"memory"``: the last layer's (hooks the model lacks are skipped); ``"layer"``: every layer's attention
    and MLP output at the prediction position; ``"head"``: every head's ``hook_z`` there.
    """
    if by not in COMPONENT_SETS:
        raise ValueError(f"components must be one of {COMPONENT_SETS} or a list of Component, got {by!r}")
    if by == "layer":
        return [Component(f"L{layer}.{site}", f"layer {layer} {name} at the prediction", H.hook(layer, site),
                          "prediction") for layer in range(model.cfg.n_layers)
                for site, name in (("attn_out", "attention output"), ("mlp_out", "MLP output"))
                if not (site == "mlp_out" and model.cfg.attn_only)]
    if by == "head":
        return [Component(f"L{layer}H{head}", f"head {layer}.{head} output at the prediction", H.hook(layer, "z"),
                          "prediction", head)
                for layer in range(model.cfg.n_layers) for head in range(model.cfg.n_heads)]
    last = resolve_layer(model.cfg.n_layers)
    stage_ii = [] if model.cfg.attn_only else [  # TransformerLens keeps hook_mlp_out on attention-only blocks
        Component("stage_II", "memory stage II (lookup neurons' output)", H.hook(last, "mlp_out"), "prediction")]
    rows = [
        Component("subjects", "attention's copy of the context subjects", H.hook(last, "v"), "subjects"),
        Component("answers", "attention's copy of the context answers", H.hook(last, "v"), "answers"),
        Component("context", "attention's copy of both members of the pairs", H.hook(last, "v"), "context"),
        Component("query", "the query token (residual stream)", H.hook(0, "resid_pre"), "query"),
        Component("pattern", "where the query attends (pattern row to the pairs)", H.hook(last, "pattern"), "context"),
        Component("attn_out", "attention output at the query", H.hook(last, "attn_out"), "prediction"),
        Component("stage_I", "memory stage I (inferred relation)", H.hook(last, "relation"), "prediction")] + stage_ii
    return [c for c in rows if c.hook in model.hook_dict]


# ------------------------------------------------------------------ results
@dataclass
class CircuitRow:
    """One component's share of each job and its ablation."""

    component: Component
    relation: float  # normalised denoising effect under the relation swap (0 corrupted, 1 clean)
    lookup: float  # normalised denoising effect under the query swap
    ablated_accuracy: float  # accuracy with the component ablated (clean prompts)
    accuracy_drop: float  # base accuracy - ablated accuracy

    def to_dict(self) -> dict:
        c = self.component
        return dict(component=c.key, label=c.label, hook=c.hook, role=c.role, **({} if c.head is None else
                    dict(head=c.head)), relation=self.relation, lookup=self.lookup,
                    ablated_accuracy=self.ablated_accuracy, accuracy_drop=self.accuracy_drop)


@dataclass
class CircuitSummary:
    """Fraction of relation inference and of answer lookup carried by each component."""

    rows: list[CircuitRow]  # one per component, in circuit_components order
    base_accuracy: float  # accuracy on the clean prompts
    baselines: dict  # job -> {"clean"/"corrupted": raw logit diffs, "n_prompts"/"n_dropped": prompts patched/left out}
    ablation_method: str  # zero | mean | resample
    n_prompts: int  # prompts the numbers average over
    seed: int  # seed of the corruptions
    extra: dict = field(default_factory=dict)  # caller's notes (checkpoint, step, ...), kept in to_dict
    chance: float = math.nan  # chance accuracy 1 / n_answers (nan: unknown, no chance check)
    jobs: tuple[str, ...] = JOBS  # jobs measured (an unmeasured job's shares are nan)

    def __getitem__(self, key: tuple[str, str]) -> float:
        """``summary[component, column]``, column one of relation, lookup, ablated_accuracy, accuracy_drop."""
        component, column = key
        for row in self.rows:
            if row.component.key == component:
                return float(getattr(row, column))
        raise KeyError(f"no component {component!r}; have {[r.component.key for r in self.rows]}")

    @property
    def components(self) -> list[str]:
        return [r.component.key for r in self.rows]

    @property
    def verdict(self) -> str:
        """One sentence, computed from the numbers: which components carry each job (or why none is named)."""
        return verdict(self)

    @property
    def at_chance(self) -> str:
        """Why the model is at chance on the clean prompts ("" if it is not, or chance is unknown)."""
        return reliability.chance_reason(self.base_accuracy, self.chance, self.n_prompts)

    @property
    def reliable(self) -> bool:
        """Whether every share is defined: the model is above chance and both corruptions move the output."""
        return not self.reason

    @property
    def reason(self) -> str:
        """Why the summary is unreliable ("" when it is reliable)."""
        jobs = [f"{_JOB_NAMES[j]}: {self.baselines[j].get('reason') or 'the gap is within its noise'}"
                for j in JOBS if not self.baselines.get(j, {}).get("reliable", True)]
        return "; ".join([r for r in (self.at_chance,) if r] + jobs)

    @property
    def warnings(self) -> list[str]:
        """Normalised shares outside :data:`~icr_interp.analysis.causal.reliability.NORMALISED_RANGE`, one line each."""
        values = torch.tensor([[getattr(r, job) for job in JOBS] for r in self.rows]).reshape(-1, len(JOBS))
        return reliability.out_of_range(values, [f"{r.component.key} {job}" for r in self.rows for job in JOBS])

    def to_dict(self) -> dict:
        return dict(columns=["relation", "lookup", "ablated_accuracy", "accuracy_drop"],
                    rows=[r.to_dict() for r in self.rows], base_accuracy=self.base_accuracy,
                    baselines=self.baselines, ablation_method=self.ablation_method, n_prompts=self.n_prompts,
                    seed=self.seed, carries_threshold=CARRIES, chance=self.chance, reliability_z=Z,
                    reliable=self.reliable, reason=self.reason, warnings=self.warnings, verdict=self.verdict,
                    jobs=list(self.jobs), **self.extra)

    def __str__(self) -> str:
        width = max([len(r.component.label) for r in self.rows] + [9])
        lines = [f"circuit summary ({self.n_prompts} prompts): denoising patching, normalised "
                 f"0 = corrupted, 1 = clean; {self.ablation_method}-ablation on clean prompts "
                 f"(base accuracy {self.base_accuracy:.3f})",
                 f"{'component':<{width}}  {'relation':>8}  {'lookup':>8}  {'abl. acc':>8}  {'Δacc':>7}"]
        for r in self.rows:
            cells = [f"{v:8.3f}" if math.isfinite(v) else f"{'-':>8}" for v in (r.relation, r.lookup)]
            lines.append(f"{r.component.label:<{width}}  {cells[0]}  {cells[1]}  "
                         f"{r.ablated_accuracy:8.3f}  {-r.accuracy_drop:+7.3f}")
        unmeasured = [_JOB_NAMES[j] for j in JOBS if j not in self.jobs]
        if unmeasured:
            lines.append(f"-: not measured ({', '.join(unmeasured)}: its corruption was not run)")
        lines += [f"warning: {w}" for w in self.warnings]
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)

    __repr__ = __str__


# ------------------------------------------------------------------ compute
def circuit_summary(model: TLModel, task: PromptTask, batch: Batch, seed: int = 0, *,
                    ablation_method: str = "mean", jobs: tuple[str, ...] = JOBS,
                    components: str | list[Component] = "memory", **extra) -> CircuitSummary:
    """Patch and ablate every component for each job (see the module docstring).

    Args:
        model: an IC-recall model (any number of layers and heads).
        task: its task (makes the corruptions).
        batch: the clean prompts.
        seed: seeds the relation and query swaps.
        ablation_method: ``"mean"``, ``"zero"`` or ``"resample"`` (:data:`icr_interp.analysis.causal.ablation.METHODS`).
        jobs: jobs to measure, each on the prompts that have its corruption (``task.corrupt_pairs``).
        components: ``"memory"`` (default), ``"layer"``, ``"head"`` (:func:`circuit_components`) or a list
            of :class:`Component`.
        **extra: JSON-able notes stored in the summary (e.g. ``checkpoint=``, ``step=``).

    Returns:
        A :class:`CircuitSummary`; ``print`` it for the table and verdict.
    """
    if ablation_method not in ablation.METHODS:
        raise ValueError(f"ablation method must be one of {ablation.METHODS}, got {ablation_method!r}")
    batch = check_batch(model, batch).to(model.cfg.device)
    if not jobs or not set(jobs) <= set(JOBS):
        raise ValueError(f"jobs must be a non-empty subset of {JOBS}, got {jobs!r}")
    components = circuit_components(model, components) if isinstance(components, str) else list(components)
    jobs = tuple(j for j in JOBS if j in jobs)  # jobs in summary order
    effects, baselines = {job: torch.full((len(components),), math.nan) for job in JOBS}, {}
    for job in jobs:
        clean, corrupted, n_dropped = task.corrupt_pairs(batch, CORRUPTION_OF[job], seed=seed)
        effects[job], baselines[job] = _denoise(model, clean, corrupted, components)
        baselines[job].update(n_prompts=len(clean), n_dropped=n_dropped)
    ablations = [ablate_component(model, batch, c, ablation_method) for c in components]
    rows = [CircuitRow(c, float(effects["relation"][i]), float(effects["lookup"][i]), a.accuracy, a.accuracy_drop)
            for i, (c, a) in enumerate(zip(components, ablations))]
    base = ablations[0].base_accuracy if ablations else float("nan")
    summary = CircuitSummary(rows, base, baselines, ablation_method, len(batch), seed, dict(extra),
                             chance=1.0 / task.kb.n_answers, jobs=jobs)
    if not summary.reliable:
        warnings.warn(f"circuit summary is unreliable: {summary.reason}", RuntimeWarning, stacklevel=2)
    if summary.warnings:
        warnings.warn(f"{len(summary.warnings)} normalised shares outside {reliability.NORMALISED_RANGE}: "
                      f"{summary.warnings[0]}", RuntimeWarning, stacklevel=2)
    return summary


def _denoise(model: TLModel, clean: Batch, corrupted: Batch,
             components: list[Component]) -> tuple[Tensor, dict]:
    """Normalised effect of patching each component clean -> corrupted, and the raw baselines.

    The runs, metric and reliability come from role patching's :func:`~icr_interp.analysis.causal.patching.by_role.setup`
    and each component's patch from its :func:`~icr_interp.analysis.causal.patching.by_role.role_patch` (all heads).
    """
    metric = LogitDiff(clean.answers, corrupted.answers, clean.layout.pred_pos)
    s = setup(model, clean, corrupted, metric, sorted({c.hook for c in components}), noising=False)
    masks = roles.masks(s.base.layout, s.base.tokens.shape[1], sorted({c.role for c in components} | {"prediction"}))
    patches = [role_patch(c.hook, c.head, masks[c.role], masks["prediction"]) for c in components]
    raw = patch_activations(model, s.base.tokens, s.source_cache, patches, s.metric, base_run=s.run)
    gap = s.m_clean - s.m_corr
    values = (raw - s.m_corr) / (gap if gap != 0 else math.nan)
    return values.detach().cpu(), dict(clean=s.m_clean, corrupted=s.m_corr, reliable=s.trust.reliable,
                                       reason=s.trust.reason, gap=s.trust.gap, gap_se=s.trust.gap_se)


def ablate_component(model: TLModel, batch: Batch, component: Component,
                     method: str = "mean") -> AblationResult:
    """Ablate a component's entries (its hook at its role's positions, all heads) on ``batch``.

    The stand-in value is :mod:`icr_interp.analysis.causal.ablation`'s (batch mean per position,
    zero, or the batch rolled by one); for the ``pattern`` component the prediction
    position's attention row to the role's positions is replaced; a per-head
    component (``head`` set) touches that head only.
    """
    n_pos = batch.tokens.shape[1]
    masks = roles.masks(batch.layout, n_pos, [component.role, "prediction"])
    mask, query = masks[component.role], masks["prediction"]

    def hook(act: Tensor, hook) -> Tensor:
        if H.kind(component.hook) == "pattern":  # [batch head dest src]
            where = query[:, None, :, None] & mask[:, None, None, :]
        else:  # [batch pos ...]
            where = mask[(...,) + (None,) * (act.ndim - 2)]
        if component.head is not None:  # [batch head ...] patterns, [batch pos head ...] per-head activations
            axis = 1 if H.kind(component.hook) == "pattern" else 2
            shape = [1] * act.ndim
            shape[axis] = act.shape[axis]
            where = where & (torch.arange(act.shape[axis], device=act.device) == component.head).reshape(shape)
        return torch.where(where, ablation.replacement(act, method), act)

    return ablation.run_ablation(model, batch, f"{component.label}", method, [(component.hook, hook)])


# ------------------------------------------------------------------ verdict
def _job_phrase(summary: CircuitSummary, job: str) -> str:
    """Which components carry ``job`` (effect >= CARRIES), the context group reported as one."""
    by_key = {r.component.key: r for r in summary.rows}
    if job not in summary.jobs:
        return f"{_JOB_NAMES[job]} not measured (no {CORRUPTION_OF[job]} swap)"
    if not summary.baselines.get(job, {}).get("reliable", True):
        b = summary.baselines[job]
        spread = f" +- {b['gap_se']:.2g} s.e." if math.isfinite(b.get("gap_se", math.nan)) else ""
        return (f"unreliable for {_JOB_NAMES[job]}: the {CORRUPTION_OF[job]} swap barely moves the output "
                f"(logit diff clean {b['clean']:.3g}, corrupted {b['corrupted']:.3g}{spread}), "
                f"so no component is named")
    carriers = [r for r in summary.rows if getattr(r, job) >= CARRIES]
    parts, group_done = [], False
    for r in carriers:
        key = r.component.key
        if key in CONTEXT_GROUP:
            if group_done:
                continue
            group_done = True
            # A member whose share is exactly 0 was not changed by this corruption (a relation swap keeps the
            # subjects): zero by construction, so it is named as such, not cited as evidence.
            inner = ", ".join(f"{'both' if k == 'context' else k} {getattr(by_key[k], job):.2f}"
                              if getattr(by_key[k], job) != 0.0 else f"{k} unchanged by the swap"
                              for k in CONTEXT_GROUP if k in by_key)
            drops = ", ".join(f"{k} {by_key[k].accuracy_drop:.2f}" for k in ("subjects", "answers") if k in by_key)
            need = f"; {summary.ablation_method}-ablated accuracy drop: {drops}" if drops else ""
            parts.append(f"attention to the context pairs (patched: {inner}{need})")
        else:
            parts.append(f"{_SHORT[key]} ({getattr(r, job):.2f})")
    if not parts:
        return f"no single component carries {_JOB_NAMES[job]} (none >= {CARRIES})"
    return f"{_JOB_NAMES[job]} runs through " + _join(parts)


def verdict(summary: CircuitSummary) -> str:
    """The summary in one line: the carriers of each job, then what they share; or why it names none."""
    if summary.at_chance:
        return f"unreliable: {summary.at_chance}, so no circuit is named"
    phrases = [_job_phrase(summary, job) for job in JOBS]
    measured = all(job in summary.jobs for job in JOBS)  # "both jobs" only when both were measured
    reliable = measured and all(summary.baselines.get(job, {}).get("reliable", True) for job in JOBS)
    shared = [r.component.key for r in summary.rows
              if reliable and all(math.isfinite(v) and v >= CARRIES for v in (r.relation, r.lookup))]
    tail = f"; both jobs pass through {_join([_SHORT[k] for k in shared])}" if shared else ""
    return "; ".join(phrases) + tail


_JOB_NAMES = {"relation": "relation inference", "lookup": "answer lookup"}
_SHORT = {"subjects": "the subjects' values", "answers": "the answers' values", "context": "the pairs' values",
          "query": "the query token", "pattern": "the query's attention pattern",
          "attn_out": "the attention output at the query", "stage_I": "memory stage I",
          "stage_II": "memory stage II"}


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def __getattr__(name: str):
    from icr_interp._moved import module_attr

    return module_attr(__name__, name)  # CircuitSeries: icr_interp.analysis.causal.circuit_series
