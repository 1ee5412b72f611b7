"""A *pretrained* memory: the two-stage MLP learned from facts, not written down.

The memory has the shape of the constructed ones (:mod:`icr_interp.model.memory.table`),
random initialisation, and ``width`` neurons per stage.  It is fitted by Adam
on factual-recall exercises drawn from the knowledge base, each with the
relation *explicit*, then frozen:

* **lookup** ``(s, <r>) -> a``: stage II reads the subject's embedding plus the
  relation token's content in the relation directions (where stage I writes)
  and must put the answer on top of the unembedding;
* **relation recall** ``{(s_i, a_i)} -> <r>``: stage I reads k facts of one
  relation as attention would copy them into the context directions, each
  token with an independent random weight in [0.25, 1.75] (so no preferred
  split between subject and answer is taught), and must write relation r's
  direction (squared error to ``relation_gain * relation[r]``: the size stage II
  is fitted on, so the two stages agree on the scale of a relation vector).

Fine-tuning then asks whether the attention that this learned memory rewards
is the pairwise one (case study 4; docs/results.md).
"""

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from icr_interp.model.basis import ResidualBasis
from icr_interp.model.memory.dense import AssociativeMemory
from icr_interp.task.prompts import ICRecallTask

DEFAULTS = dict(width=0, steps=1500, batch_size=256, lr=3e-3, seed=0, relation_gain=1.0)


def resolve_options(cfg) -> dict:
    """The pretraining options of a :class:`~icr_interp.model.builder.ModelConfig`, defaults filled in (seed: the model's)."""
    unknown = sorted(set(cfg.pretrain) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown pretrain option {unknown[0]!r}; options are {', '.join(DEFAULTS)}")
    return {**DEFAULTS, "seed": cfg.seed, **cfg.pretrain}


def _initialised(task: ICRecallTask, d_model: int, opts: dict) -> tuple[AssociativeMemory, torch.Generator]:
    """The memory's random start and the generator, advanced past it, that its fit continues with."""
    width = opts["width"] or 2 * task.kb.n_triplets
    gen = torch.Generator().manual_seed(opts["seed"])
    memory = AssociativeMemory(d_model, width, width, "pretrained")
    with torch.no_grad():
        for w in (memory.W_rel_in, memory.W_in):
            w.copy_(torch.randn(w.shape, generator=gen) / d_model**0.5)
        for w in (memory.W_rel_out, memory.W_out):
            w.copy_(torch.randn(w.shape, generator=gen) / width**0.5)
    return memory, gen


def pretrained_memory(task: ICRecallTask, basis: ResidualBasis, cfg) -> AssociativeMemory:
    """The pretrained memory's random start (``build_model`` attaches it; :func:`pretrain_memory` fits it)."""
    return _initialised(task, basis.d_model, cfg.pretrain)[0]


def pretrain_memory(model, task: ICRecallTask, progress: bool = True) -> list[float]:
    """Fit a model's pretrained memory on factual recall (a step of its own; building never trains).

    The memory is re-drawn from its seed first, so pretraining a model twice
    gives the same memory.  Afterwards ``model.memory_fitted`` is True.

    Returns:
        The pretraining loss per step.
    """
    cfg = model.icr_config
    if cfg.construction != "pretrained":
        raise ValueError(f"model has a {cfg.construction!r} memory; only a 'pretrained' memory is pretrained")
    memory = model.blocks[-1].mlp
    start, gen = _initialised(task, cfg.d_model, cfg.pretrain)
    with torch.no_grad():
        for p, p0 in zip(memory.parameters(), start.parameters()):
            p.copy_(p0)
    basis = model.basis
    losses = fit_memory(memory, task, basis, model.unembed.W_U.detach(), cfg.pretrain, gen, progress)
    model.memory_fitted = True
    return losses


def fit_memory(memory: AssociativeMemory, task: ICRecallTask, basis: ResidualBasis, W_U: torch.Tensor,
               opts: dict, gen: torch.Generator, progress: bool = True) -> list[float]:
    """Adam on the two factual-recall exercises; returns the loss per step."""
    params = list(memory.parameters())
    grad_before = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=opts["lr"])
    losses = []
    for _ in tqdm(range(opts["steps"]), desc="pretrain memory", disable=None if progress else True, leave=False):
        loss = _lookup_loss(memory, task, basis, W_U, opts, gen) + _relation_loss(memory, task, basis, opts, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for p, g in zip(params, grad_before):
        p.requires_grad_(g)
    return losses


def _lookup_loss(memory, task, basis, W_U, opts, gen) -> torch.Tensor:
    """(s, <r>) -> a through stage II alone."""
    s, r, answer_tok = task.sample_facts(opts["batch_size"], generator=gen)
    dev = basis.token.device
    s, r, answer_tok = s.to(dev), r.to(dev), answer_tok.to(dev)
    x = basis.token[task.vocab.subject_token(s)] + opts["relation_gain"] * basis.relation[r]
    pre = x @ memory.W_in + memory.b_in
    logits = (F.relu(pre) @ memory.W_out + memory.b_out) @ W_U
    return F.cross_entropy(logits, answer_tok)


def _relation_loss(memory, task, basis, opts, gen) -> torch.Tensor:
    """k facts of one relation, randomly weighted, -> that relation through stage I."""
    batch = task.sample(opts["batch_size"], generator=gen)
    weights = 0.25 + 1.5 * torch.rand(batch.tokens.shape, generator=gen)
    batch, weights = batch.to(basis.token.device), weights.to(basis.token.device)
    ctx = torch.cat([batch.layout.subject_end, batch.layout.answer_end], dim=1)
    toks = batch.tokens.gather(1, ctx)
    x = (weights.gather(1, ctx)[..., None] * basis.context[toks]).sum(1)
    x = x + basis.token[batch.tokens.gather(1, batch.layout.query_end[:, None])[:, 0]]
    relation = memory.infer_relation(x[:, None])[:, 0]
    # Regress onto the relation token's direction (not cross-entropy, which grows the
    # vector without bound): stage II was fitted on relation inputs of exactly this size.
    target = opts["relation_gain"] * basis.relation[batch.relations]
    return F.mse_loss(relation, target, reduction="sum") / len(target)
