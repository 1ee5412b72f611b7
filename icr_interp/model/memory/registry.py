"""The registry of memory implementations: how a constructed memory is computed.

Every implementation computes the same function from a :class:`~icr_interp.model.memory.table.MemoryTable`
(tests check equality); they differ in cost. Each module registers its builder with :func:`register`
(``dense``, ``factored``, ``sparse``), and :func:`construct_memory` looks the name up -- no if/elif, no lazy
imports; a new implementation is one module and one decorator. :func:`check_impl` is the one check of an
implementation's name, and :func:`choose_impl` the rule for ``"auto"``.
"""

from dataclasses import asdict
from collections.abc import Callable

import torch
from torch import nn

from icr_interp._moved import moved_arg
from icr_interp.model.basis import ResidualBasis
from icr_interp.model.memory.reads import crosstalk_free
from icr_interp.model.memory.table import MemoryScales, MemoryTable, memory_table
from icr_interp.task.knowledge import KnowledgeBase
from icr_interp.task.vocab import Vocabulary

Builder = Callable[[MemoryTable, ResidualBasis, str], nn.Module]
_IMPLEMENTATIONS: dict[str, Builder] = {}  # name -> builder, in registration order


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: register ``builder(table, basis, construction) -> memory`` as implementation ``name``."""

    def add(builder: Builder) -> Builder:
        if name in _IMPLEMENTATIONS:
            raise ValueError(f"memory implementation {name!r} is registered twice")
        _IMPLEMENTATIONS[name] = builder
        return builder

    return add


def impl_names() -> tuple[str, ...]:
    """The registered implementations."""
    return tuple(_IMPLEMENTATIONS)


def check_impl(name, auto: bool = False) -> str:
    """``name`` if it is a registered implementation (or ``"auto"`` where allowed); a one-line ValueError else."""
    allowed = ("auto", *_IMPLEMENTATIONS) if auto else tuple(_IMPLEMENTATIONS)
    if name not in allowed:
        raise ValueError(f"memory_impl must be one of {', '.join(allowed)}, got {name!r}")
    return name


# choose_impl's rule, measured with benchmarks/bench_memory.py ([4] crossover, memory forward +
# backward at 64 query rows; docs/results.md ("Sparse memory")): up to N * d = 2^19 the three
# implementations are within ~2 ms of each other (the sparse path's ~40 small kernels cost a fixed
# few ms), from 2^19 on the sparse memory is fastest and its lead grows with N (1.6x over factored
# and 8x over dense at 2^23, 8x over factored at 10^6 facts).  Small models stay dense: real
# nn.Parameter weights, and the reference model's pinned numbers unchanged.
DENSE_MAX_WEIGHTS = 2**18

def choose_impl(requested: str, n_facts: int, d_model: int) -> str:
    """The implementation ``requested`` means: ``"auto"`` picks the fastest for this size.

    Args:
        requested: ``"auto"``, ``"dense"``, ``"factored"`` or ``"sparse"``.
        n_facts: stored triplets (stage-II neurons).
        d_model: residual width.
    """
    if check_impl(requested, auto=True) != "auto":
        return requested
    return "dense" if n_facts * d_model <= DENSE_MAX_WEIGHTS else "sparse"

def construct_memory(construction: str, kb: KnowledgeBase, vocab: Vocabulary, basis: ResidualBasis,
                     n_pairs: int, scales: MemoryScales = MemoryScales(), factored: bool | None = None,
                     impl: str | None = None) -> nn.Module:
    """Write a memory in closed form.

    Args:
        construction: ``"pair"`` or ``"answer"``.
        kb: the facts to store.
        vocab: token ids of the knowledge base.
        basis: residual-stream directions the weights are written in.
        n_pairs: context pairs per prompt (sets the stage-I gain).
        scales: thresholds and gains.
        factored: the first release's spelling of ``impl="factored"`` (deprecated, :mod:`icr_interp._moved`;
            ignored when ``impl`` is given).
        impl: ``"dense"`` (:class:`AssociativeMemory`, weights O(n_facts * d_model)),
            ``"factored"`` (:class:`FactoredMemory`, O(vocab * d_model + n_facts)) or
            ``"sparse"`` (:class:`~icr_interp.model.memory.sparse.SparseMemory`: the factored
            weights, evaluated only at neurons that can fire); all compute the same function.
    """
    if factored is not None:
        moved_arg("icr_interp.model.memory.construct_memory", "factored=...")
    impl = check_impl(impl or ("factored" if factored else "dense"))
    table = memory_table(construction, kb, vocab, n_pairs, scales)
    subjects = vocab.subject_token(torch.arange(kb.n_subjects))
    fix = crosstalk_free(basis, subjects) if table.normalise and scales.mixed_crosstalk_free else None
    basis = fix[0] if fix else basis  # mixed on a random basis: crosstalk-free reads (memory/table.py)
    memory = _IMPLEMENTATIONS[impl](table, basis, construction)
    memory.scales = asdict(scales)
    return memory.cancel_direct_path(fix[1]) if fix else memory
