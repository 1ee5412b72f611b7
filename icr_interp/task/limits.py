"""Size limits, checked from a config before anything is allocated.

A request that would not fit in memory is refused in one line *before* the
first large allocation, naming the estimate, the limit and how to raise it.
The estimates are upper-bound arithmetic on the shapes a config implies
(8 bytes per ``long`` table entry, 4 per ``float32`` weight, about
:data:`NAME_BYTES` per Python name string), not measurements; they only need
to be right within a small factor to turn "allocate 80 GB and die" into a
message.

The limit is :data:`DEFAULT_MAX_BYTES` (8 GiB), or half the machine's memory
if that is less, unless the environment variable :data:`ENV` says otherwise (a number of bytes, ``K``/``M``/``G``/``T``
suffixes allowed: ``ICR_INTERP_MAX_BYTES=64G``).

This module sits at the bottom of the import graph (standard library only),
so the knowledge base, the run config, the checkpoint loader and the probes
all use the same rule.
"""

import os
import re

ENV = "ICR_INTERP_MAX_BYTES"
DEFAULT_MAX_BYTES = 8 * 2**30
NAME_BYTES = 80  # a short Python str in a tuple, with its slot
FLOAT_BYTES, LONG_BYTES = 4, 8
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def max_bytes() -> int:
    """The memory limit: ``$ICR_INTERP_MAX_BYTES`` if set (one-line ValueError if unreadable), else the default
    (:data:`DEFAULT_MAX_BYTES` or half the physical memory, whichever is less)."""
    text = os.environ.get(ENV, "").strip()
    if not text:
        try:
            return min(DEFAULT_MAX_BYTES, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2)
        except (ValueError, OSError, AttributeError):
            return DEFAULT_MAX_BYTES
    match = re.fullmatch(r"(\d{1,20})\s*([KMGT]?)(?:i?B)?", text, flags=re.IGNORECASE)
    if not match:
        raise ValueError(f"{ENV} must be a number of bytes such as 34359738368 or 32G, got {text[:40]!r}")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def human(n_bytes: float) -> str:
    """``n_bytes`` in the largest binary unit that keeps it >= 1 (``12.8 GiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n_bytes) < 1024 or unit == "PiB":
            return f"{n_bytes:.3g} {unit}" if unit != "B" else f"{int(n_bytes)} B"
        n_bytes /= 1024
    return f"{n_bytes:.3g} PiB"  # unreachable


def check_bytes(n_bytes: int, what: str) -> int:
    """``n_bytes`` if it is within :func:`max_bytes`; else a one-line ValueError naming the limit and the knob."""
    limit = max_bytes()
    if n_bytes > limit:
        raise ValueError(f"{what} needs about {human(n_bytes)} of memory, over the limit of {human(limit)}; "
                         f"set {ENV} (e.g. {ENV}=64G) to raise it")
    return n_bytes


def knowledge_bytes(n_subjects: int, n_relations: int, n_answers: int) -> int:
    """A knowledge base: its ``[relation subject]`` long table, the answer permutation, and the names."""
    return (LONG_BYTES * (n_relations * n_subjects + n_answers)
            + NAME_BYTES * (n_subjects + n_relations + n_answers))


def model_bytes(d_vocab: int, n_ctx: int, d_model: int, n_heads: int, n_layers: int) -> int:
    """The transformer's float32 weights: embeddings, unembedding, and W_Q, W_K, W_V, W_O with d_head = d_model."""
    embeddings = d_vocab * d_model * 2 + n_ctx * d_model
    attention = n_layers * 4 * n_heads * d_model * d_model
    return FLOAT_BYTES * (embeddings + attention)


def prompt_bytes(n_prompts: int, n_ctx: int) -> int:
    """A batch of prompts: tokens plus its layout (a few long index tensors per prompt and position)."""
    return LONG_BYTES * n_prompts * (3 * n_ctx + 8)


def forward_bytes(n_prompts: int, n_pos: int, n_heads: int, d_model: int, d_mlp: int, d_vocab: int) -> int:
    """Peak of one inference forward without a cache: one layer's attention scores, pattern and a softmax
    temporary (3 ``[batch head pos pos]``), the residual stream and a block's activations (about 8
    ``[batch pos d_model]`` and 3 ``[batch pos d_mlp]``), and one row of logits per prompt, in float32.
    Attention grows with the square of the prompt: a 10,000-token prompt of 9 heads needs 10.8 GB alone."""
    per_prompt = 3 * n_heads * n_pos**2 + 8 * n_pos * d_model + 3 * n_pos * d_mlp + d_vocab
    return FLOAT_BYTES * n_prompts * per_prompt


def prompts_per_forward(n_prompts: int, n_pos: int, n_heads: int, d_model: int, d_mlp: int, d_vocab: int,
                        what: str = "a forward") -> int:
    """How many of ``n_prompts`` prompts of ``n_pos`` tokens one forward may take within :func:`max_bytes`
    (at least 1; a one-line ValueError if even one prompt does not fit)."""
    one = forward_bytes(1, n_pos, n_heads, d_model, d_mlp, d_vocab)
    check_bytes(one, f"{what} on one prompt of {n_pos} tokens")
    return max(1, min(n_prompts, max_bytes() // one))
