"""Batches of text prompts: the prompt stream (prefix-stable, relations balanced), tensors, layouts.

**The prompt stream.**  ``sample(n)`` must give the first ``n`` prompts of ``sample(n + 1)`` (same seed), so
that accuracies on 90 and 96 prompts are comparable, and every relation must get its share, so that a mean
over prompts is not a mean over whichever relations happened to be drawn.  Both come from one rule: the
caller's generator draws one 62-bit seed per prompt (a vector draw, itself prefix-stable); prompt ``i`` draws
everything it needs -- its subjects, and any redraw -- from its own generator seeded with it.  Relations are
dealt in blocks: prompt ``i`` takes the ``i mod R``-th relation of a random permutation of the ``R`` usable
relations, drawn from the seed of the block's first prompt (``balance=False``: uniform per prompt).  A batch of
90 prompts over 6 relations then holds 15 of each, and 96 hold 16 of each.

The helpers below turn tokenized prompts into the right-padded ``[batch pos]`` tokens and the span
:class:`~icr_interp.task.layout.Layout` (:meth:`~icr_interp.task.layout.Layout.from_encoded`) every analysis reads.
"""

import torch
from jaxtyping import Int
from torch import Tensor

from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.layout import Layout
from icr_interp.task.batch import Batch

SEED_BOUND = 2**62  # per-prompt seeds are drawn in [0, SEED_BOUND)


def prompt_generators(gen: torch.Generator, n: int) -> list[torch.Generator]:
    """One generator per prompt, seeded from ``gen`` (prompt ``i``'s draws depend on nothing after it)."""
    seeds = torch.randint(SEED_BOUND, (n,), generator=gen).tolist() if n else []
    return [torch.Generator().manual_seed(s) for s in seeds]


def deal(choices: Tensor, gens: list[torch.Generator], balance: bool = True) -> Int[Tensor, " batch"]:
    """One of ``choices`` per prompt: dealt in shuffled blocks of ``len(choices)`` (``balance``), else uniform.

    The block's permutation comes from the generator of its first prompt (drawn before that prompt's own
    draws), so the deal is prefix-stable like the rest of the stream.
    """
    out, perm = [], None
    for i, g in enumerate(gens):
        if not balance:
            out.append(choices[torch.randint(len(choices), (), generator=g)])
            continue
        if i % len(choices) == 0:
            perm = torch.randperm(len(choices), generator=g)
        out.append(choices[perm[i % len(choices)]])
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.long)


def exclude_shared(kb: KnowledgeBase, targets: Tensor) -> tuple[Tensor, dict[str, list[str]]]:
    """The table without facts whose target is -1 or shared by two answers of one relation, and what went."""
    table, excluded = torch.where(targets >= 0, kb.table, -1), {}
    for r in range(kb.n_relations):
        known = torch.nonzero(kb.table[r] >= 0).flatten()
        pairs = set(zip(kb.table[r, known].tolist(), targets[r, known].tolist()))
        by_token: dict[int, set[int]] = {}
        for answer, token in pairs:
            by_token.setdefault(token, set()).add(answer)
        bad = {a for tok, answers in by_token.items() if tok < 0 or len(answers) > 1 for a in answers}
        if bad:
            excluded[kb.relations[r]] = sorted(kb.answers[a] for a in bad)
            table[r, torch.isin(kb.table[r], torch.tensor(sorted(bad)))] = -1
    return table, excluded


def concat(batches: list[Batch], pad_id: int) -> Batch:
    """One batch of several (tokens right-padded to the widest)."""
    width = max(b.tokens.shape[1] for b in batches)
    tokens = torch.cat([torch.nn.functional.pad(b.tokens, (0, width - b.tokens.shape[1]), value=pad_id)
                        for b in batches])
    cat = lambda name: torch.cat([getattr(b, name) for b in batches])  # noqa: E731
    return Batch(tokens=tokens, answers=cat("answers"), relations=cat("relations"), subjects=cat("subjects"),
                 query=cat("query"), layout=Layout.cat([b.layout for b in batches]),
                 context_answers=cat("context_answers"))


def pad(ids: list[list[int]], pad_id: int) -> Int[Tensor, "batch pos"]:
    """Token id lists right-padded with ``pad_id`` into one tensor."""
    width = max((len(x) for x in ids), default=0)
    return torch.tensor([x + [pad_id] * (width - len(x)) for x in ids], dtype=torch.long).reshape(len(ids), width)

