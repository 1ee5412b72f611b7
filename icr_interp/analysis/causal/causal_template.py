"""A causal test of an attention pattern: put a template into chosen heads and see how much of the answer comes back.

Template *scores* (:mod:`icr_interp.analysis.scoring.templates`) say how close a head's prediction row is to the
pairwise pattern; they do not say the model *uses* that shape.  Here, after causal scrubbing's and
circuitry's sufficiency tests, the prediction row of each chosen head's ``hook_pattern`` is overwritten
with a template -- the values (what each position offers) stay the model's own -- and the logit difference
at the prediction position is measured:

* ``own``: the head's own row (a check: recovers exactly 1);
* ``pairwise``: the ideal pairwise template, weight ``beta_i / 2`` on subject ``s_i`` and on answer ``a_i``
  of every pair, nothing elsewhere;
* ``null``: :data:`N_NULL` draws of the same template re-paired (``beta_i / 2`` on ``s_i`` and on
  ``a_pi(i)``, a random ``pi`` other than the identity per example): the pairing null of the template
  scores, made causal -- only the pairing differs from ``pairwise``;
* ``answers``: ``beta_i`` on ``a_i`` only; ``subjects``: ``beta_i`` on ``s_i`` only;
* ``uniform``: equal weight on every context token.

**Across pairs** (``beta``): ``"fit"`` (default) takes, per example and head, the weights of the pairwise
template nearest to the head's own row (:func:`~icr_interp.analysis.scoring.pairwise_form.fit_pairwise` on its span
masses), so ``pairwise`` keeps the head's choice of pairs and removes only its imbalance and off-context mass;
``"mean_row"`` the fitted weights averaged over examples (one template per head); ``"uniform"`` ``1 / k``
(then the re-paired null equals ``pairwise``: the pairing is invisible without varying weights);
``"random"`` Dirichlet(1) weights per example (seeded), a stress test of the pairing.  **Within a span**
(``within_span``): ``"last"`` (default) puts a role's weight on the span's last token -- where a
multi-token name has been read -- and ``"uniform"`` spreads it over the span's tokens.  On one-token spans
(the toy prompts) the two agree.

**What is recovered.**  The metric, per example at the prediction position, is ``"logit_diff"``
``logit[target] - logit[corrupted target]`` when a ``corrupted`` batch is given (the default then), else
``"logprob"`` the target's log-probability (the default without one), or ``"target_vs_mean"`` the target's
logit minus the mean logit (which an answers-only row can inflate by raising every answer at once).  The
baseline ablates the chosen heads at the prediction row (their ``hook_z`` there replaced by its mean over
the batch: the heads say nothing specific to the prompt), and each template recovers ``(metric(template) - metric(base)) / (metric(clean) - metric(base))`` (means over examples).

Example::

    result = causal_template_test(model, task.sample(256, seed=0), heads=[(0, 0)])
    print(result)   # recovered fraction per template; result.beats_null
"""

import warnings
from dataclasses import dataclass, field
from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from icr_interp.analysis.causal import reliability
from icr_interp.analysis.scoring.pairwise_form import fit_pairwise
from icr_interp.model import hooks as H
from icr_interp.model.forward import unembed
from icr_interp.task.batch import Batch
from icr_interp.task.tokens import check_model_tokens
from icr_interp.tl.compat import TLModel

BETAS = ("fit", "mean_row", "uniform", "random")
WITHIN_SPANS = ("last", "uniform")
METRICS = ("logit_diff", "logprob", "target_vs_mean")
N_NULL = 8  # re-paired null templates drawn


@dataclass(frozen=True)
class CausalTemplateResult:
    """What each template, written into the chosen heads' prediction rows, recovers (module docstring)."""

    heads: tuple  # the (layer, head) pairs overwritten
    metric: str  # "logit_diff" (target - corrupted target), "logprob" or "target_vs_mean"
    clean: float  # mean metric of the unpatched run
    base: float  # mean metric with the heads mean-ablated at the prediction row
    values: dict  # template name -> mean metric
    recovered: dict  # template name -> (value - base) / (clean - base)
    null_recovered: tuple  # recovered fraction of each re-paired null template
    accuracy: dict  # "clean", "base" and each template -> top-1 accuracy on the target
    beta: str  # how the across-pair weights were chosen
    within_span: str  # how a role's weight is spread over its span
    n_examples: int
    per_example: dict = field(default_factory=dict, repr=False)  # template name -> [batch] metric (CPU)
    reliable: bool = True  # the clean - ablated gap stands out of its spread and the model is above chance
    reason: str = ""  # why the recovered fractions are unreliable ("" when reliable)
    warnings: list = field(default_factory=list)  # recovered fractions outside the sane range

    @property
    def null_mean(self) -> float:
        return sum(self.null_recovered) / max(1, len(self.null_recovered))

    @property
    def beats_null(self) -> bool:
        """Whether the pairwise template recovers more than every re-paired null draw."""
        return bool(self.null_recovered) and self.recovered["pairwise"] > max(self.null_recovered)

    def to_dict(self) -> dict:
        return dict(heads=[list(h) for h in self.heads], metric=self.metric, clean=self.clean, base=self.base,
                    values=dict(self.values), recovered=dict(self.recovered), null_recovered=list(self.null_recovered),
                    null_mean=self.null_mean, beats_null=self.beats_null, accuracy=dict(self.accuracy),
                    beta=self.beta, within_span=self.within_span, n_examples=self.n_examples,
                    reliable=self.reliable, reason=self.reason, warnings=list(self.warnings))

    def __str__(self) -> str:
        heads = ", ".join(f"L{layer}H{head}" for layer, head in self.heads)
        lines = [f"CausalTemplateResult: {self.n_examples} examples, heads {heads}; metric {self.metric} "
                 f"(clean {self.clean:.3f}, heads ablated {self.base:.3f}); beta {self.beta}, within span "
                 f"{self.within_span}"] + ([] if self.reliable else [f"UNRELIABLE: {self.reason}"])
        lines.append(f"  {'template':>10} {'recovered':>9} {'accuracy':>8}")
        for name in self.recovered:
            lines.append(f"  {name:>10} {self.recovered[name]:9.3f} {self.accuracy[name]:8.3f}")
        if self.null_recovered:
            lines.append(f"  {'null':>10} {self.null_mean:9.3f} (max {max(self.null_recovered):.3f} over "
                         f"{len(self.null_recovered)} re-pairings; pairwise beats every one: {self.beats_null})")
        return "\n".join(lines)

    __repr__ = __str__


def causal_template_test(model: TLModel, batch: Batch, heads: Sequence[tuple[int, int]], *,
                         corrupted: Batch | None = None, metric: str | None = None, beta: str = "fit",
                         within_span: str = "last", n_null: int = N_NULL, seed: int = 0,
                         n_answers: int | None = None) -> CausalTemplateResult:
    """Overwrite the chosen heads' prediction rows with templates and measure the logit difference recovered.

    Args:
        model: any ``HookedTransformer`` (TransformerLens hooks only: ``hook_pattern``, ``hook_z``).
        batch: prompts with their span layout (toy or text).
        heads: ``(layer, head)`` pairs whose prediction rows are overwritten together.
        corrupted: matched corrupted prompts (``task.corrupt_pairs``); their targets are the other side of
            ``"logit_diff"``.
        metric: one of :data:`METRICS` (default: ``"logit_diff"`` with ``corrupted``, else ``"logprob"``).
        beta: across-pair weights, one of :data:`BETAS` (module docstring).
        within_span: ``"last"`` or ``"uniform"`` (module docstring).
        n_null: re-paired null templates drawn (0: none; needs k >= 2).
        seed: seeds the null's re-pairings and ``beta="random"``.
        n_answers: size of the answer set, for the chance check (default: distinct targets in the batches).

    Returns:
        :class:`CausalTemplateResult`; ``reliable`` and ``reason`` by the toolkit's rule
        (:mod:`icr_interp.analysis.causal.reliability`, as :func:`~icr_interp.analysis.causal.patching.patch_by_role`): the
        clean - ablated gap must stand out of its spread over the examples and the model must be above chance
        on the prompts, else a ``RuntimeWarning`` says why.
    """
    heads = _check_heads(model, heads)
    metric = metric or ("logprob" if corrupted is None else "logit_diff")
    if metric not in METRICS or (metric == "logit_diff") != (corrupted is not None):
        raise ValueError(f"metric must be one of {METRICS}, 'logit_diff' exactly when corrupted is given; "
                         f"got {metric!r}")
    if beta not in BETAS or within_span not in WITHIN_SPANS:
        raise ValueError(f"beta must be one of {BETAS} and within_span one of {WITHIN_SPANS}; "
                         f"got {beta!r}, {within_span!r}")
    check_model_tokens(model, batch.tokens, "batch.tokens")
    if corrupted is not None and len(corrupted) != len(batch):
        raise ValueError(f"corrupted has {len(corrupted)} prompts, batch {len(batch)}")
    k = batch.layout.subject_end.shape[1]
    if k < 1:
        raise ValueError("the causal template test needs prompts with context pairs (k >= 1)")
    device = model.cfg.device
    b = batch.to(device)
    gen = torch.Generator().manual_seed(seed)
    other = metric if corrupted is None else corrupted.answers.to(device)
    n_pos = b.tokens.shape[1]
    weights = _span_weights(b, n_pos, within_span)  # [batch pair pos] x 2
    with torch.no_grad():
        clean_m, clean_acc, rows, z_mean = _clean_run(model, b, heads, other)
        base_m, base_acc = _run(model, b, other, [_mean_z_hook(layer, hs, b, z_mean) for layer, hs in _by_layer(heads)])
        subj, ans = (torch.einsum("hbp,bkp->hbk", rows, w) for w in weights)  # [head batch pair]: span masses
        betas = _betas(subj, ans, beta, gen)  # [head batch pair]
        out = {"own": rows}
        out["pairwise"] = _template(weights, betas / 2, betas / 2)
        out["answers"] = _template(weights, torch.zeros_like(betas), betas)
        out["subjects"] = _template(weights, betas, torch.zeros_like(betas))
        out["uniform"] = _template(weights, *(torch.full_like(betas, 0.5 / k),) * 2)
        results = {name: _run(model, b, other, _pattern_hooks(heads, b, row)) for name, row in out.items()}
        nulls = []
        for _ in range(n_null if k >= 2 else 0):
            perm = _repairings(len(b), k, gen).to(device)  # [batch pair]: pair i's answer weight goes to a_perm[i]
            moved = torch.zeros_like(betas).scatter_(-1, perm.expand_as(betas), betas / 2)
            nulls.append(_run(model, b, other, _pattern_hooks(heads, b, _template(weights, betas / 2, moved)))[0])
    clean_v, base_v = float(clean_m.mean()), float(base_m.mean())
    gap = clean_v - base_v
    frac = lambda m: (float(m.mean()) - base_v) / gap if gap != 0 else float("nan")  # noqa: E731
    trust, notes = _trust(b, corrupted, clean_m, base_m, clean_acc, n_answers,
                          {n: frac(m) for n, (m, _) in results.items()})
    return CausalTemplateResult(
        heads=tuple(heads), metric=metric, clean=clean_v,
        base=base_v, values={n: float(m.mean()) for n, (m, _) in results.items()},
        recovered={n: frac(m) for n, (m, _) in results.items()}, null_recovered=tuple(frac(m) for m in nulls),
        accuracy={"clean": clean_acc, "base": base_acc, **{n: acc for n, (_, acc) in results.items()}},
        beta=beta, within_span=within_span, n_examples=len(b),
        per_example={"clean": clean_m.cpu(), "base": base_m.cpu(), **{n: m.cpu() for n, (m, _) in results.items()}},
        reliable=trust.reliable, reason=trust.reason, warnings=notes)


def _trust(b: Batch, corrupted: Batch | None, clean_m: Tensor, base_m: Tensor, clean_acc: float,
           n_answers: int | None, recovered: dict) -> tuple[reliability.Reliability, list[str]]:
    """The toolkit's reliability rule on the clean vs heads-ablated runs (a RuntimeWarning when it fails), and
    the recovered fractions outside the sane range (listed only: a template can overshoot on purpose)."""
    answers = set(b.answers.tolist()) | (set() if corrupted is None else set(corrupted.answers.tolist()))
    n_answers = n_answers or len(answers)
    trust = reliability.assess(clean_m, base_m, float(clean_m.mean()), float(base_m.mean()), clean_acc,
                               1.0 / max(1, n_answers), len(b))
    if not trust.reliable:
        warnings.warn(f"recovered fractions are unreliable: {trust.reason}", RuntimeWarning, stacklevel=3)
    return trust, reliability.out_of_range(torch.tensor(list(recovered.values())), list(recovered))


# ---------------------------------------------------------------- pieces
def _check_heads(model: TLModel, heads) -> list[tuple[int, int]]:
    out = []
    for item in heads:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"heads must be (layer, head) pairs, got {item!r}")
        layer, head = (int(x) for x in item)
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise ValueError(f"head ({layer}, {head}) out of range for {model.cfg.n_layers} layers x "
                             f"{model.cfg.n_heads} heads")
        out.append((layer, head))
    if not out:
        raise ValueError("heads must name at least one (layer, head)")
    return sorted(set(out))


def _by_layer(heads: list[tuple[int, int]]) -> list[tuple[int, list[int]]]:
    layers = sorted({layer for layer, _ in heads})
    return [(layer, [h for l2, h in heads if l2 == layer]) for layer in layers]


def _span_weights(b: Batch, n_pos: int, within_span: str) -> tuple[Tensor, Tensor]:
    """``[batch pair pos]`` weights that put one unit on each subject / answer span."""
    m = b.layout.span_masks(n_pos)
    if within_span == "uniform":
        return tuple(x.float() / x.sum(-1, keepdim=True).clamp_min(1) for x in (m.subject, m.answer))
    pos = torch.arange(n_pos, device=b.tokens.device)
    return tuple((pos == end[..., None]).float() for end in (b.layout.subject_end, b.layout.answer_end))


def _template(weights: tuple[Tensor, Tensor], on_subjects: Tensor, on_answers: Tensor) -> Tensor:
    """``[head batch pos]`` rows: ``on_subjects[h, b, i]`` on s_i's span and ``on_answers`` on a_i's."""
    ws, wa = weights
    return torch.einsum("hbk,bkp->hbp", on_subjects, ws) + torch.einsum("hbk,bkp->hbp", on_answers, wa)


def _betas(subj: Tensor, ans: Tensor, beta: str, gen: torch.Generator) -> Tensor:
    if beta == "uniform":
        return torch.full_like(subj, 1 / subj.shape[-1])
    if beta == "random":
        g = torch.empty(subj.shape[1:]).exponential_(generator=gen)  # normalised exponentials: Dirichlet(1)
        return (g / g.sum(-1, keepdim=True)).to(subj)[None].expand_as(subj).clone()
    fitted = fit_pairwise(subj, ans)  # [head batch pair], on the simplex
    return fitted.mean(1, keepdim=True).expand_as(fitted).clone() if beta == "mean_row" else fitted


def _repairings(n: int, k: int, gen: torch.Generator) -> Tensor:
    """``[n pair]`` random permutations of k pairs, none the identity."""
    perms = torch.rand(n, k, generator=gen).argsort(-1)
    ident = torch.arange(k)
    while (same := (perms == ident).all(-1)).any():
        perms[same] = torch.rand(int(same.sum()), k, generator=gen).argsort(-1)
    return perms


def _metric(logits: Float[Tensor, "batch vocab"], target: Tensor, other: Tensor | str) -> Tensor:
    """Per example: target minus ``other`` (corrupted targets), or the named metric."""
    rows = torch.arange(len(target), device=logits.device)
    if isinstance(other, str):
        ref = logits.mean(-1) if other == "target_vs_mean" else logits.logsumexp(-1)
    else:
        ref = logits[rows, other]
    return logits[rows, target].float() - ref.float()


def _final_logits(model: TLModel, b: Batch, hooks: list) -> Float[Tensor, "batch vocab"]:
    """Logits at each example's prediction position (the unembedding applied to those rows only)."""
    keep = {}
    last = H.hook(model.cfg.n_layers - 1, "resid_post")
    rows = torch.arange(len(b), device=b.tokens.device)
    grab = lambda act, hook: keep.__setitem__("x", act[rows, b.layout.pred_pos])  # noqa: E731
    model.run_with_hooks(b.tokens, return_type=None, fwd_hooks=[*hooks, (last, grab)])
    x = keep["x"]
    if getattr(model, "ln_final", None) is not None:
        x = model.ln_final(x[:, None])[:, 0]
    return unembed(model, x)


def _run(model: TLModel, b: Batch, other, hooks: list) -> tuple[Tensor, float]:
    logits = _final_logits(model, b, hooks)
    return _metric(logits, b.answers, other), float((logits.argmax(-1) == b.answers).float().mean())


def _clean_run(model: TLModel, b: Batch, heads, other):
    """Clean metric and accuracy, the chosen heads' prediction rows ``[head batch pos]`` and mean z there."""
    rows_of, z_of = {}, {}
    ex = torch.arange(len(b), device=b.tokens.device)
    hooks = []
    for layer, hs in _by_layer(heads):
        hooks.append((H.hook(layer, "pattern"), lambda act, hook, layer=layer, hs=hs: rows_of.__setitem__(
            layer, act[ex, :, b.layout.pred_pos][:, hs])))  # [batch head' pos]
        hooks.append((H.hook(layer, "z"), lambda act, hook, layer=layer, hs=hs: z_of.__setitem__(
            layer, act[ex, b.layout.pred_pos][:, hs].mean(0))))  # [head' d_head]
    metric, acc = _run(model, b, other, hooks)
    rows = torch.cat([rows_of[layer].transpose(0, 1) for layer, _ in _by_layer(heads)]).float()
    return metric, acc, rows, z_of


def _mean_z_hook(layer: int, hs: list[int], b: Batch, z_mean: dict):
    ex = torch.arange(len(b), device=b.tokens.device)

    def hook(act, hook):
        act = act.clone()
        act[ex[:, None], b.layout.pred_pos[:, None], torch.tensor(hs, device=act.device)[None]] = \
            z_mean[layer].to(act.dtype)[None]
        return act
    return H.hook(layer, "z"), hook


def _pattern_hooks(heads, b: Batch, rows: Tensor) -> list:
    """Hooks writing ``rows[i]`` (``[batch pos]``, one per chosen head in order) into the prediction rows."""
    ex = torch.arange(len(b), device=b.tokens.device)
    hooks, i = [], 0
    for layer, hs in _by_layer(heads):
        mine = rows[i:i + len(hs)]  # [head' batch pos]
        i += len(hs)

        def hook(act, hook, hs=hs, mine=mine):
            act = act.clone()
            idx = torch.tensor(hs, device=act.device)
            act[ex[:, None], idx[None], b.layout.pred_pos[:, None]] = mine.transpose(0, 1).to(act.dtype)
            return act
        hooks.append((H.hook(layer, "pattern"), hook))
    return hooks
