"""Associative memories: the MLP that stores the facts, constructed in closed form or pretrained.

One concept per module: :mod:`base` (the MLP contract, the five hook points, the direct path), :mod:`table`
(the constructions in symbolic form), :mod:`registry` (implementations by name, :func:`construct_memory`),
the implementations :mod:`dense`, :mod:`factored` and :mod:`sparse` (the same function at different costs),
:mod:`reads` (crosstalk-free reads on a random basis) and :mod:`pretrained` (fitted by gradient descent).
"""

from icr_interp.model.memory.base import MemoryModule, vote_scale
from icr_interp.model.memory.table import (CONSTRUCTIONS, MEMORIES, MemoryScales, MemoryTable, memory_table,
                                           pick_construction)
from icr_interp.model.memory.registry import (DENSE_MAX_WEIGHTS, check_impl, choose_impl, construct_memory,
                                              impl_names, register)
from icr_interp.model.memory.dense import AssociativeMemory
from icr_interp.model.memory.factored import FactoredMemory
from icr_interp.model.memory.sparse import SparseMemory
from icr_interp.model.memory.reads import crosstalk_free, query_readout

IMPLS = impl_names()  # dense, factored, sparse: how a constructed memory is computed (the same function)

__all__ = ["MemoryModule", "vote_scale", "CONSTRUCTIONS", "MEMORIES", "MemoryScales", "MemoryTable", "memory_table",
           "pick_construction", "DENSE_MAX_WEIGHTS", "check_impl", "choose_impl", "construct_memory", "impl_names",
           "register", "AssociativeMemory", "FactoredMemory", "SparseMemory", "crosstalk_free", "query_readout",
           "IMPLS"]
