"""The Bayes-optimal accuracy of IC-recall prompts: what any model could reach on them.

A context may not pin its relation down: with shared answers, a pair (s, a)
can be stored under several relations, and with gaps a relation may lack the
query's fact.  Given the prompts the task samples (a relation r drawn with
probability ``prior[r]``, then k + 1 distinct subjects from the ``n_r``
subjects r knows, ordered), the posterior over relations of one prompt is

    P(r | context, query) ∝ prior[r] · 1[r gives every a_i = a*(s_i, r) and knows s_q] · Π_{j=0..k} 1/(n_r − j),

and the best possible prediction is the answer with the largest posterior mass
``Σ_{r: a*(s_q, r) = a} P(r | ...)``; its probability of being right is that
largest mass.  The *ceiling* of a set of prompts is the mean of it: accuracy
above it is impossible, and a model at the ceiling has nothing left to learn.
For a complete base with bijective relations over one shared answer set and k
>= 2 it is ~1 (a wrong relation rarely agrees on every pair).
"""

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.task.batch import Batch
from icr_interp.task.protocol import PromptTask


def relation_prior(task: PromptTask) -> Float[Tensor, " relation"]:
    """The probability that the task draws each relation for a prompt (:attr:`PromptTask.relation_weights`)."""
    return task.relation_weights


@torch.no_grad()
def ceiling(task: PromptTask, batch: Batch) -> Float[Tensor, " batch"]:
    """Per prompt, the probability that the Bayes-optimal prediction is right (see module docstring)."""
    table = task.kb.table  # [relation subject]
    b = batch.to("cpu")
    ctx_answers = table[b.relations[:, None], b.subjects]  # [batch pair] the answers the prompts show
    per_rel = table[:, b.subjects]  # [relation batch pair]: what each relation would have shown
    consistent = (per_rel == ctx_answers[None]).all(-1) & (table[:, b.query] >= 0)  # [relation batch]
    n_facts = (table >= 0).sum(1).double()  # [relation]
    falling = torch.stack([n_facts - j for j in range(task.n_pairs + 1)]).clamp_min(1).prod(0)
    weight = consistent.double() * (relation_prior(task).double() / falling)[:, None]  # [relation batch]
    answers = table[:, b.query].clamp_min(0)  # [relation batch]
    mass = torch.zeros(len(b), task.kb.n_answers, dtype=torch.double)
    mass.scatter_add_(1, answers.T, weight.T)
    return (mass.max(1).values / weight.sum(0)).float()
