"""Associative memories: the MLP that stores the facts, constructed in closed form or pretrained.

:mod:`associative` (the table, the constructions, dense and factored), :mod:`sparse` (exact sparse evaluation),
:mod:`reads` (crosstalk-free reads on a random basis), :mod:`pretrained` (fitted by gradient descent).
"""

from icr_interp.model.memory.associative import (  # noqa: F401
    CONSTRUCTIONS, MEMORIES, MemoryScales, vote_scale, AssociativeMemory, MemoryTable, memory_table, IMPLS, DENSE_MAX_WEIGHTS, choose_impl, construct_memory, FactoredMemory, pick_construction,
)
