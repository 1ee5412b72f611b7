"""Template scoring: how close is each head's query attention row to an ideal pattern?

The paper's claim is about one attention row: the one from the query subject
``s_q`` back to the context ``[s_1, a_1, ..., s_k, a_k]``.  After fine-tuning
it should be *pairwise*: equal weight on ``s_i`` and ``a_i`` within every pair,
free weights ``beta_i`` across pairs, nothing elsewhere.  This module measures
how far a row ``p`` is from a *family* of templates with total-variation
distance ``TV(p, T) = 0.5 * sum |p - T|`` -- the fraction of attention mass that
would have to move -- minimised over the family's free weights:

=============  ==============================================  ===========================
template       members                                          TV to the nearest member
=============  ==============================================  ===========================
``pairwise``   ``T(s_i) = T(a_i) = beta_i / 2``, beta on simplex  closed form, see below
``answers``    any distribution over the answers ``a_i``         ``1 - sum_i p(a_i)``
``subjects``   any distribution over the subjects ``s_i``        ``1 - sum_i p(s_i)``
``uniform``    ``1 / 2k`` on each context token (fixed)           ``0.5 * sum |p - u|``
``sink``       any split between BOS and the query itself        ``1 - p(BOS) - p(s_q)``
=============  ==============================================  ===========================

With pair mass ``M = sum_i p(s_i) + p(a_i)`` the nearest pairwise member has
L1 distance ``(1 - M) + sum_i |p(s_i) - p(a_i)| + max(0, 1 - sum_i 2 max(p(s_i),
p(a_i)))``: the off-pair mass must move into the pairs, within a pair any
weight between the two members costs their difference, and pushing a pair
above its larger member costs extra (derivation in docs/theory.md, "Template
scoring").  The *pairwise score* is ``1 - TV`` in [0, 1]; *balance* is
``2 sum_i min(p(s_i), p(a_i)) / M`` (1 = equal within every pair).  Uniform is
a member of the pairwise family, so a row is called ``"uniform"`` rather than
``"pairwise"`` when the uniform template is within :data:`UNIFORM_MARGIN` of
the best pairwise one (the across-pair freedom is not used).

**The null.**  Every row that puts its mass on the context is close to *some*
pairwise member; what only a pairing gives is equal weight on ``s_i`` and
``a_i`` *of the same pair*.  So every score comes with ``pairwise_null``: the
score of the same row with ``s_i`` paired to ``a_pi(i)``, averaged over
permutations ``pi`` (all ``k!`` when ``k! <= NULL_MAX_PERMUTATIONS``, else a
seeded sample).  With ``D_pi = sum_i |p(s_i) - p(a_pi(i))|`` the closed form
gives ``score_pi = min(M, 1 - (1 - M + D_pi) / 2)``: only ``D_pi`` depends on
the pairing, so a uniform or answers-only row scores its null exactly
(docs/theory.md, "Template scores against a null").

The score ``1 - TV`` is a *distance to the family*, kept as such: it has a blind
spot (when ``sum_i max(p(s_i), p(a_i)) <= 1/2`` it is ``M`` under every pairing).
The *test* of the pairing is :func:`icr_interp.analysis.scoring.pairing_test.pairing_test_rows`
on the rows renormalised over the pair tokens (no blind spot): ``effect`` and
``effect_mass`` (true pairing against derangements, renormalised and in attention
mass) and its randomisation ``p_value``; beside it the adjacency-matched control
(:mod:`icr_interp.analysis.scoring.adjacency_control`: pseudo-pairs ``(a_i, s_{i+1})``),
``adjacency`` (margin in attention mass) and ``adjacency_p``; and the position-matched
control (:mod:`icr_interp.analysis.scoring.position_control`), ``position_p``, reported only.  A head is called
``"pairwise"`` only when it passes the rule of :mod:`icr_interp.analysis.scoring.pairing_evidence`:
``p_value`` and ``adjacency_p`` both ``<= NULL_ALPHA`` and ``effect_mass >=
PAIRING_MIN_MASS``; otherwise by the nearest other template.  With ``k = 1``
nothing is ever ``"pairwise"``.

Scores come two ways (``docs/theory.md`` explains why both matter): *per
example* (score every example's row, then average; the headline) and *mean
row* (average the rows first, aligned by role -- pair i's subject and answer,
BOS, query -- using each example's layout, then score).  A model that fits
token-specific directions can have a balanced mean row while no single row is
balanced.  Each *layer* is also scored through its combined row (its heads' rows
weighted by their OV share, :mod:`icr_interp.analysis.scoring.combined_rows`): what the memory
reads when heads split the work, e.g. one on subjects and one on answers.

Example::

    scores = score_templates(model, task.sample(256, seed=0))
    print(scores)                 # one table row per (layer, head)
    scores.to_dict()["pairwise_null"], scores.to_dict()["p_value"]  # what chance gives, and the test
    scores.to_dict()["combined"][-1]["pairwise"]  # the last layer's OV-weighted combined row
"""

import math
from dataclasses import dataclass, fields

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from icr_interp.analysis.scoring.attention import query_rows, query_rows_from_cache, resolve_layer  # noqa: F401
from icr_interp.analysis.scoring.combined_rows import combine_rows, normalise_shares, ov_shares
from icr_interp.tl.compat import TLModel
from icr_interp.analysis.scoring.pairing_null import (NULL_ALPHA, NULL_DRAWS, NULL_MAX_PERMUTATIONS, NULL_MIN_EFFECT,  # noqa: F401
                                     NULL_SEED, pairing_test, pairings)
from icr_interp.task.batch import Batch
from icr_interp.task.layout import Layout
from icr_interp.analysis.inputs import check_batch
from icr_interp.analysis.scoring.pairing_evidence import pairing_evidence, rule_text
from icr_interp.analysis.scoring.pairing_test import PAIRING_MIN_MASS
from icr_interp.analysis.scoring.pairwise_form import fit_pairwise, pairing_scores, pairwise_tv  # noqa: F401
from icr_interp.analysis.scoring.template_table import format_table

TEMPLATES = ("pairwise", "answers", "subjects", "uniform", "sink")
UNIFORM_MARGIN = 0.02  # call a row "uniform" when TV(uniform) - TV(pairwise) is at most this
_ROW_SUM_TOL = 1e-2  # attention rows must sum to 1 (loose enough for half precision)


@dataclass(frozen=True)
class RoleMass:
    """Attention mass of rows on each role of the prompt (leading dims as the rows')."""

    subject: Float[Tensor, "*lead pair"]  # mass on s_i (summed over its span)
    answer: Float[Tensor, "*lead pair"]  # mass on a_i (summed over its span)
    bos: Float[Tensor, "*lead"]  # mass on BOS (0 without one)
    query: Float[Tensor, "*lead"]  # mass on the query subject's span

    @classmethod
    def of(cls, rows: Float[Tensor, "*lead batch pos"], layout: Layout) -> "RoleMass":
        """Each example's role masses, summed over that example's own spans (one token each in toy prompts)."""
        lay = layout.to(rows.device)
        if lay.one_token_spans:  # gather: exactly the first release's numbers
            lead = rows.shape[:-1]  # (..., batch)
            take = lambda pos: rows.gather(-1, pos.expand(*lead, pos.shape[-1]))  # noqa: E731
            has_bos = lay.bos_pos >= 0
            bos = take(lay.bos_pos.clamp_min(0)[:, None])[..., 0] * has_bos
            return cls(take(lay.subject_end), take(lay.answer_end), bos, take(lay.query_end[:, None])[..., 0])
        m = lay.span_masks(rows.shape[-1])
        spans = lambda mask: torch.einsum("...bp,bkp->...bk", rows, mask.to(rows.dtype))  # noqa: E731
        one = lambda mask: (rows * mask.to(rows.dtype)).sum(-1)  # noqa: E731
        return cls(spans(m.subject), spans(m.answer), one(m.bos), one(m.query))

    def mean(self, dim: int) -> "RoleMass":
        """Role-aligned average over the leading axis ``dim`` (>= 0): pair i with pair i, BOS with BOS."""
        return RoleMass(*(getattr(self, f.name).mean(dim) for f in fields(self)))

    @property
    def pair_mass(self) -> Float[Tensor, "*lead"]:
        return (self.subject + self.answer).sum(-1)


# ------------------------------------------------------------ templates
def template_tv(mass: RoleMass) -> Float[Tensor, "*lead template"]:
    """TV distance to the nearest member of every template family, in :data:`TEMPLATES` order."""
    n_ctx = 2 * mass.subject.shape[-1]
    uniform = 0.5 * ((mass.subject - 1 / n_ctx).abs().sum(-1) + (mass.answer - 1 / n_ctx).abs().sum(-1)
                     + (1 - mass.pair_mass).clamp_min(0))
    tv = (pairwise_tv(mass.subject, mass.answer), 1 - mass.answer.sum(-1), 1 - mass.subject.sum(-1), uniform,
          1 - mass.bos - mass.query)
    return torch.stack(tv, -1).clamp_min(0)


def balance(mass: RoleMass) -> Float[Tensor, "*lead"]:
    """Within-pair balance ``2 sum_i min(p(s_i), p(a_i)) / M`` (0 when there is no pair mass)."""
    return 2 * torch.minimum(mass.subject, mass.answer).sum(-1) / mass.pair_mass.clamp_min(1e-12)


def best_template(tv: Float[Tensor, "*lead template"], pairing_shown: Bool[Tensor, "*lead"] | None = None) -> list:
    """Name of the nearest template, where ``"pairwise"`` must earn its name.

    ``"pairwise"`` only where the pairing is shown (``pairing_shown``: the
    null test passed; everywhere if not given) and the uniform template is
    more than UNIFORM_MARGIN further away; otherwise the nearest of the other
    templates (so a near-uniform row is ``"uniform"``).
    """
    p, u = TEMPLATES.index("pairwise"), TEMPLATES.index("uniform")
    allowed = tv[..., u] - tv[..., p] > UNIFORM_MARGIN
    if pairing_shown is not None:
        allowed = allowed & pairing_shown.to(tv.device)
    masked = tv.clone()
    masked[..., p] = torch.where(allowed, tv[..., p], torch.full_like(tv[..., p], math.inf))
    return _names(masked.argmin(-1).tolist())


def _names(idx):
    return [_names(i) for i in idx] if isinstance(idx, list) else TEMPLATES[idx]


# --------------------------------------------------------------- results
@dataclass(frozen=True)
class HeadScores:
    """Template scores of every (layer, head), averaged one way (per example or mean row)."""

    pairwise: Float[Tensor, "layer head"]  # 1 - TV to the nearest pairwise template
    balance: Float[Tensor, "layer head"]  # within-pair balance
    pair_mass: Float[Tensor, "layer head"]  # attention mass on the context pairs
    tv: Float[Tensor, "layer head template"]  # TV to each template family (TEMPLATES order)
    beta: Float[Tensor, "layer head pair"]  # fitted across-pair weights of the nearest pairwise template
    best: tuple  # [layer][head] name of the nearest template ("pairwise" only if the null test passed)
    pairwise_null: Float[Tensor, "layer head"]  # the pairwise score averaged over re-pairings s_i -- a_pi(i)
    p_value: Float[Tensor, "layer head"]  # one-sided p of the pairing test (renormalised rows, over examples)
    effect: Float[Tensor, "layer head"]  # pairing effect on the renormalised rows: true pairing vs derangements
    effect_mass: Float[Tensor, "layer head"]  # the same in attention mass (the "edge" of the table)
    adjacency: Float[Tensor, "layer head"]  # margin of the true pairs over pseudo-pairs (a_i, s_i+1), in mass
    adjacency_p: Float[Tensor, "layer head"]  # one-sided p that the true pairs beat the pseudo-pairs
    position_p: Float[Tensor, "layer head"]  # p that own prompts' pairs beat other prompts' (reported, not required)

    def at(self, layer: int, head: int) -> dict:
        """Plain-data scores of one head."""
        return dict(pairwise=float(self.pairwise[layer, head]), balance=float(self.balance[layer, head]),
                    pair_mass=float(self.pair_mass[layer, head]), best=self.best[layer][head],
                    tv={t: float(v) for t, v in zip(TEMPLATES, self.tv[layer, head])},
                    beta=self.beta[layer, head].tolist(), pairwise_null=float(self.pairwise_null[layer, head]),
                    p_value=float(self.p_value[layer, head]), effect=float(self.effect[layer, head]),
                    effect_mass=float(self.effect_mass[layer, head]), adjacency=float(self.adjacency[layer, head]),
                    adjacency_p=float(self.adjacency_p[layer, head]), position_p=float(self.position_p[layer, head]))


def _head_scores(tv, bal, mass_on_pairs, beta, null, p_value, effect, effect_mass, adjacency,
                 adjacency_p, position_p, shown=None) -> HeadScores:
    """Summarise [layer head] tensors into a :class:`HeadScores` (tensors on CPU), applying the pairing rule.

    ``shown`` overrides the rule (the mean row takes the per-example call: it has no examples to test).
    """
    tv, bal, mass_on_pairs, beta, null, p_value, effect, effect_mass, adjacency, adjacency_p, position_p = (
        x.detach().cpu().float() for x in (tv, bal, mass_on_pairs, beta, null, p_value, effect, effect_mass,
                                           adjacency, adjacency_p, position_p))
    pairwise = 1 - tv[..., 0]
    if shown is None:
        shown = (p_value <= NULL_ALPHA) & (adjacency_p <= NULL_ALPHA) & (effect_mass >= PAIRING_MIN_MASS)
    best = tuple(tuple(row) for row in best_template(tv, shown))
    return HeadScores(pairwise, bal, mass_on_pairs, tv, beta, best, null, p_value, effect, effect_mass, adjacency,
                      adjacency_p, position_p)


@dataclass(frozen=True, repr=False)
class TemplateScores:
    """Template scores of every head; the headline is per example, for the head that matters.

    Attributes ``pairwise``, ``balance``, ``pair_mass``, ``tv``, ``beta``,
    ``best``, ``pairwise_null``, ``p_value`` are the per-example ``[layer,
    head]`` arrays; ``mean_row`` holds the same for the role-aligned mean row
    (its ``p_value`` is the per-example test's: the mean row has no examples
    of its own).  ``combined`` / ``combined_mean_row`` score each layer's
    combined row (``[layer, 1]`` arrays), weighted by ``head_shares``.
    """

    per_example: HeadScores  # scores per example, averaged over examples (best = argmin of mean TV)
    mean_row: HeadScores  # scores of the role-aligned mean attention row
    layer: int  # the head that matters: layer ...
    head: int  # ... and head (default: last layer, highest per-example pair mass)
    n_examples: int  # number of rows scored
    combined: HeadScores | None = None  # per example, each layer's OV-weighted combined row ([layer 1] arrays)
    combined_mean_row: HeadScores | None = None  # the same for the role-aligned mean of the combined rows
    head_shares: Tensor | None = None  # [layer head] weight of each head in its layer's combined row

    pairwise = property(lambda self: self.per_example.pairwise)
    balance = property(lambda self: self.per_example.balance)
    pair_mass = property(lambda self: self.per_example.pair_mass)
    tv = property(lambda self: self.per_example.tv)
    beta = property(lambda self: self.per_example.beta)
    best = property(lambda self: self.per_example.best)
    pairwise_null = property(lambda self: self.per_example.pairwise_null)
    p_value = property(lambda self: self.per_example.p_value)

    @property
    def n_layers(self) -> int:
        return self.pairwise.shape[0]

    @property
    def n_heads(self) -> int:
        return self.pairwise.shape[1]

    def to_dict(self) -> dict:
        """JSON-able scores: the head that matters at top level, then every head."""
        heads = [dict(layer=layer, head=head, **self.per_example.at(layer, head),
                      mean_row=self.mean_row.at(layer, head))
                 for layer in range(self.n_layers) for head in range(self.n_heads)]
        return dict(layer=self.layer, head=self.head, n_examples=self.n_examples, templates=list(TEMPLATES),
                    uniform_margin=UNIFORM_MARGIN, null_alpha=NULL_ALPHA, null_min_effect=NULL_MIN_EFFECT,
                    pairing_min_mass=PAIRING_MIN_MASS, pairing_rule=rule_text(),
                    **self.per_example.at(self.layer, self.head),
                    mean_row=self.mean_row.at(self.layer, self.head), per_head=heads, combined=self._combined())

    def _combined(self) -> list:
        """One entry per layer: its combined row's scores, head shares and mean row (``[]`` if not scored)."""
        return [] if self.combined is None else [
            dict(layer=layer, head_shares=self.head_shares[layer].tolist(), **self.combined.at(layer, 0),
                 mean_row=self.combined_mean_row.at(layer, 0)) for layer in range(self.n_layers)]

    def headline(self) -> dict:
        """Flat plain-data scores of the head that matters: per example, ``p_value``, then ``mean_row_*``."""
        keys = ("pairwise", "balance", "pair_mass", "best", "pairwise_null")
        per, mean = self.per_example.at(self.layer, self.head), self.mean_row.at(self.layer, self.head)
        return {**{k: per[k] for k in keys}, "p_value": per["p_value"], **{f"mean_row_{k}": mean[k] for k in keys}}

    def __str__(self) -> str:
        """The table: a count of pairwise heads, the largest edge, then every head (or the top rows of many)."""
        return format_table(self, TEMPLATES)

    __repr__ = __str__


# ------------------------------------------------------------- scoring
def score_rows(rows: Float[Tensor, "*lead batch pos"], layout: Layout, *, layer: int | None = None,
               head: int | None = None, head_shares: Float[Tensor, "layer head"] | None = None) -> TemplateScores:
    """Score given attention rows against every template (no model needed).

    Args:
        rows: query attention rows, ``[layer head batch pos]`` as from
            :func:`query_rows`; ``[head batch pos]`` or ``[batch pos]`` are read
            as one layer / one head.  Each row must sum to 1.
        layout: per-example positions of subjects, answers, query and BOS.
        layer, head: the head that matters (default: the last layer's head
            with the highest per-example pair mass; ``layer`` alone picks the
            best head of that layer, ``head`` alone that head of the last layer).
        head_shares: ``[layer head]`` weights of the heads in their layer's
            combined row (normalised per layer; default: equal).

    Returns:
        :class:`TemplateScores` with per-example and mean-row scores of every
        head and of every layer's combined row, each with its null
        (``pairwise_null``) and the test's ``p_value``.
    """
    rows = _as_layer_head(rows).float()
    if rows.shape[2] != layout.query_end.shape[0]:
        raise ValueError(f"rows hold {rows.shape[2]} examples, the layout {layout.query_end.shape[0]}")
    if ((rows.sum(-1) - 1).abs() > _ROW_SUM_TOL).any():
        raise ValueError("attention rows must be distributions summing to 1 (pass hook_pattern rows, not scores)")
    shares = normalise_shares(torch.ones(rows.shape[:2]) if head_shares is None else head_shares.detach().cpu())
    if shares.shape != rows.shape[:2]:
        raise ValueError(f"head_shares must be [layer head] = {list(rows.shape[:2])}, got {list(shares.shape)}")
    per_example, mean_row = _score(rows, layout)
    combined, combined_mean = _score(combine_rows(rows, shares)[:, None], layout)  # [layer 1 batch pos]
    layer, head = _head_that_matters(per_example.pair_mass, layer, head)
    return TemplateScores(per_example, mean_row, layer, head, rows.shape[2], combined, combined_mean, shares)


def _score(rows: Float[Tensor, "layer head batch pos"], layout: Layout) -> tuple[HeadScores, HeadScores]:
    """Per-example and role-aligned mean-row scores of ``[layer head]`` rows (the null test seeded afresh)."""
    mass = RoleMass.of(rows, layout)  # [layer head batch (pair)]
    gen = torch.Generator().manual_seed(NULL_SEED)
    perms = pairings(mass.subject.shape[-1], gen)
    tv = template_tv(mass)
    permuted = pairing_scores(mass.subject, mass.answer, perms)  # [layer head batch perm]
    ev = pairing_evidence(mass.subject, mass.answer, seed=NULL_SEED)  # the test without a blind spot + control
    t, c = ev.test, ev.control
    per_example = _head_scores(tv.mean(2), balance(mass).mean(2), mass.pair_mass.mean(2),
                               fit_pairwise(mass.subject, mass.answer).mean(2), permuted.mean((2, 3)), t.p_value,
                               t.effect, t.effect_mass, c.margin_mass, c.p_value, ev.position.p_value)
    mean = mass.mean(2)  # role-aligned mean row: [layer head (pair)]; its effects are of that one row
    one = pairing_evidence(mean.subject[..., None, :], mean.answer[..., None, :], draws=1)
    mean_row = _head_scores(template_tv(mean), balance(mean), mean.pair_mass, fit_pairwise(mean.subject, mean.answer),
                            pairing_scores(mean.subject, mean.answer, perms).mean(-1), t.p_value,
                            one.test.effect, one.test.effect_mass, one.control.margin_mass, c.p_value,
                            ev.position.p_value, shown=ev.shown.cpu())
    return per_example, mean_row


def score_templates(model: TLModel, batch: Batch, *, layer: int | None = None,
                    head: int | None = None) -> TemplateScores:
    """Score every head's query attention row of ``model`` on ``batch`` against the templates.

    Args:
        model: any ``HookedTransformer``.
        batch: prompts with their per-example layout.
        layer, head: the head that matters (see :func:`score_rows`).

    Returns:
        :class:`TemplateScores`; ``print`` it for a table, ``.to_dict()`` for JSON.

    Raises:
        ValueError: (one line) for an empty batch, token ids outside the model's vocabulary, prompts longer
            than its context, or a layout that points outside the prompts (:func:`~icr_interp.analysis.inputs.check_batch`).
    """
    check_batch(model, batch)
    shares = ov_shares(model).cpu()  # each head's share of its layer's OV gain: the combined row's weights
    return score_rows(query_rows(model, batch), batch.layout, layer=layer, head=head, head_shares=shares)


def _as_layer_head(rows: Tensor) -> Tensor:
    if rows.ndim < 2 or rows.ndim > 4:
        raise ValueError(f"rows must be [layer head batch pos], [head batch pos] or [batch pos]; got {rows.ndim}-D")
    return rows.reshape(*(1,) * (4 - rows.ndim), *rows.shape)


def _head_that_matters(pair_mass: Tensor, layer: int | None, head: int | None) -> tuple[int, int]:
    """The last layer's (or the given layer's) head with the most pair mass, unless given."""
    n_layers, n_heads = pair_mass.shape
    layer = resolve_layer(n_layers, layer)  # the one rule for which layer (default the last)
    head = int(pair_mass[layer].argmax()) if head is None else head
    if not -n_heads <= head < n_heads:
        raise ValueError(f"head {head} out of range for {n_heads} heads")
    return layer, head % n_heads
