"""Where the work sits in a model with several heads or layers: the analyses behind the heads/layers case studies.

**Heads.**  With two heads in a layer the pairwise pattern can be *per head*
(each head's row balanced within pairs) or *split across heads* (one head on
the subjects, the other on the answers: neither row is balanced, but their
OV-weighted combination -- what the memory reads,
:mod:`icr_interp.analysis.scoring.combined_rows` -- is).  :func:`head_split` measures each
head's subject and answer mass on the context and names the case by the rule
in :func:`split_verdict`.

**Layers.**  The memory (relation inference in stage I, answer lookup in stage
II) is the last block's MLP, but with two layers both layers' attention write
the context it reads (each half of it: :mod:`icr_interp.model.builder`).
:func:`job_locations` denoises (clean into corrupted, :mod:`icr_interp.analysis.causal.patching`)
every layer's per-head output and attention output at the query, each layer's
query-row pattern on the context, and the memory's stages, once for the
relation swap (only relation inference must change) and once for the query
swap (only the lookup must change); a component that recovers ~1 of a job's
logit difference carries that job.
"""

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.model import hooks as H
from icr_interp.tl.compat import TLModel
from icr_interp.analysis.causal.patching import patch_by_role
from icr_interp.task.batch import Batch
from icr_interp.task.protocol import PromptTask
from icr_interp.analysis.scoring.templates import RoleMass, query_rows, score_templates

BALANCED = 0.8  # a row with within-pair balance >= this is "balanced"
ONE_SIDED = 0.8  # a head with >= this fraction of its context mass on one role is "on subjects" / "on answers"


@dataclass(frozen=True)
class HeadSplit:
    """Per (layer, head) context masses, per example averaged, and the layer's combined row."""

    subject: Float[Tensor, "layer head"]  # mass on s_1..s_k
    answer: Float[Tensor, "layer head"]  # mass on a_1..a_k
    balance: Float[Tensor, "layer head"]  # within-pair balance (templates.balance)
    combined_balance: Float[Tensor, " layer"]  # balance of the OV-weighted combined row
    shares: Float[Tensor, "layer head"]  # OV share of each head in its layer
    verdict: tuple  # per layer: "per head", "split across heads" or "mixed" (split_verdict)

    def to_dict(self) -> dict:
        return dict(subject=self.subject.tolist(), answer=self.answer.tolist(), balance=self.balance.tolist(),
                    combined_balance=self.combined_balance.tolist(), shares=self.shares.tolist(),
                    verdict=list(self.verdict))


def split_verdict(balance: Float[Tensor, " head"], subject_fraction: Float[Tensor, " head"],
                  combined_balance: float) -> str:
    """Name how a layer's heads share the pairwise pattern.

    ``"per head"``: every head is balanced (``>= BALANCED``).  ``"split across
    heads"``: at least one head puts ``>= ONE_SIDED`` of its context mass on
    subjects and another as much on answers, and their combined row is more
    balanced than any of them (the memory reads the combination).  Else ``"mixed"``.
    """
    if bool((balance >= BALANCED).all()):
        return "per head"
    on_subjects, on_answers = subject_fraction >= ONE_SIDED, subject_fraction <= 1 - ONE_SIDED
    if bool(on_subjects.any()) and bool(on_answers.any()) and combined_balance > float(balance.max()):
        return "split across heads"
    return "mixed"


def head_split(model: TLModel, batch: Batch) -> HeadSplit:
    """Subject and answer mass of every head's query row, balances, and the per-layer verdict."""
    scores = score_templates(model, batch)
    mass = RoleMass.of(query_rows(model, batch).float(), batch.layout)  # [layer head batch pair]
    subject, answer = mass.subject.sum(-1).mean(-1).cpu(), mass.answer.sum(-1).mean(-1).cpu()
    fraction = subject / (subject + answer).clamp_min(1e-12)
    combined = scores.combined.balance[:, 0]
    verdict = tuple(split_verdict(scores.balance[layer], fraction[layer], float(combined[layer]))
                    for layer in range(scores.n_layers))
    return HeadSplit(subject, answer, scores.balance, combined, scores.head_shares, verdict)


def job_hooks(model: TLModel) -> tuple[list[str], list[str]]:
    """Activation hooks patched at the query, and pattern hooks patched on the context, of every layer."""
    return H.job_hooks(model)


def job_locations(model: TLModel, task: PromptTask, batch: Batch, seed: int = 0) -> dict:
    """Normalised denoising recovery of each component for each job (``relation``, ``lookup``).

    Returns:
        ``{"components": [...], "relation": [...], "lookup": [...], "reliable": {...}, "n_prompts": {...}}``:
        activations at the query role, patterns on the context role (0 = corrupted, 1 = clean).
    """
    acts, patterns = job_hooks(model)
    out: dict = dict(reliable={}, n_prompts={}, reason={})
    for job, kind in (("relation", "relation"), ("lookup", "query")):
        clean, corrupted, _ = task.corrupt_pairs(batch, kind, seed=seed)
        # the prediction position: the query itself in toy prompts, the last token of a text prompt
        at_query = patch_by_role(model, clean, corrupted, hooks=acts, roles=["prediction"])
        on_context = patch_by_role(model, clean, corrupted, hooks=patterns, roles=["context"])
        out["components"] = [f"{c} @query" for c in at_query.components] + \
                            [f"{c} @context" for c in on_context.components]
        out[job] = at_query.values[:, 0].tolist() + on_context.values[:, 0].tolist()
        out["reliable"][job] = at_query.reliable and on_context.reliable
        out["reason"][job] = at_query.reason or on_context.reason
        out["n_prompts"][job] = len(clean)
    return out


def format_jobs(jobs: dict) -> str:
    """A plain table: component, relation-swap recovery, query-swap recovery."""
    width = max(len(c) for c in jobs["components"])
    lines = [f"{'component'.ljust(width)}  relation  lookup"]
    lines += [f"{c.ljust(width)}  {r:8.3f}  {q:6.3f}" for c, r, q in zip(jobs["components"], jobs["relation"],
                                                                        jobs["lookup"])]
    return "\n".join(lines)
