"""Explicit random draws shared by the toy and the text prompt tasks.

Every draw of the task layer takes an explicit ``torch.Generator`` (a seed or a generator must be passed:
sampling is never implicit), so that a batch is a function of its seed alone.  What both tasks draw is the
same: a relation among those that can fill a prompt, then k + 1 distinct subjects among those the relation
knows, then -- for a corruption -- one option uniformly among the valid ones.  The helpers here are those
draws, written once.
"""

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def generator(seed: int | None, gen: torch.Generator | None = None) -> torch.Generator:
    """An explicit generator: ``gen`` when given, else a fresh one seeded with ``seed`` (one of them is required)."""
    if gen is not None:
        return gen
    if seed is None:
        raise ValueError("pass a seed or a torch.Generator: sampling is always explicit")
    return torch.Generator().manual_seed(seed)


def check_count(batch_size) -> int:
    """``batch_size`` if it is an integer >= 0 (a bool is not); else a one-line ValueError."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 0:
        raise ValueError(f"batch_size must be an integer >= 0, got {batch_size!r}")
    return batch_size


def draw(options: Bool[Tensor, " option"], gen: torch.Generator) -> Int[Tensor, ""]:
    """One index where ``options`` is True, uniformly (the caller makes sure there is one)."""
    choices = torch.nonzero(options).flatten()
    return choices[torch.randint(len(choices), (), generator=gen)]


def distinct_subjects(table: Int[Tensor, "relation subject"], relation: int, n: int,
                      gen: torch.Generator) -> Int[Tensor, " n"]:
    """``n`` distinct subjects that ``relation`` knows (``table >= 0``), uniformly without replacement, in draw order.

    The last one is a prompt's query, the others its context subjects.
    """
    pool = torch.nonzero(table[relation] >= 0).flatten()
    return pool[torch.randperm(len(pool), generator=gen)[:n]]


def usable_relations(table: Int[Tensor, "relation subject"], n_subjects: int) -> Int[Tensor, " usable"]:
    """The relations that know at least ``n_subjects`` subjects (those a prompt can be drawn from)."""
    return torch.nonzero((table >= 0).sum(1) >= n_subjects).flatten()


def relation_weights(n_relations: int, usable: Int[Tensor, " usable"]) -> Float[Tensor, " relation"]:
    """How a prompt draws its relation: uniformly over ``usable``; ``[relation]`` probabilities, 0 elsewhere."""
    weights = torch.zeros(n_relations)
    weights[usable] = 1.0 / len(usable)
    return weights
