"""Checkpoint format versions, and one migration rule per older format.

``config.json`` names its format (``"format": "icr_interp-checkpoint/N"``).  A
format changes version whenever the *meaning* of what it stores changes; each
older version has exactly one rule here that rewrites its config into the next
version, and loading applies the rules in order until the config is current.
Nothing is inferred from which keys a current-format file happens to hold.

Format history:

* ``icr_interp-checkpoint/1`` -- icr_interp 0.1.x.  Two model fields could be
  left implicit, and what an absent value meant changed during 0.1:

  - ``memory_impl: "auto"`` (the first 0.1 builds saved it unresolved) meant
    the first release's rule: factored (buffers) when ``n_triplets * d_model``
    exceeds :data:`V1_FACTORED_ABOVE`, else dense (parameters);
  - a ``mixed`` memory without ``mixed_vote_gain`` in its scales was written
    before the mixed start became a flat optimum (docs/theory.md §2b) and means
    the scales of :data:`V1_MIXED_SCALES`.

* ``icr_interp-checkpoint/2`` -- icr_interp 0.2 (current).  Every model field
  is written explicitly: ``memory_impl`` resolved (except a pretrained memory's,
  which is fitted, not built) and ``scales`` complete, so a missing value is an
  error, not a convention.

The rule for /1 fills in exactly those two conventions, so a /1 checkpoint
rebuilds the same model, bit for bit (tests/safety/test_bad_input_regressions.py loads the
two checkpoints in tests/data that the 0.1 release wrote).
"""

import copy
from dataclasses import dataclass
from collections.abc import Callable

FAMILY = "icr_interp-checkpoint/"
FORMAT = FAMILY + "2"  # written by this library
V1_FACTORED_ABOVE = 2**24  # format 1's "auto": factored memory above this many n_triplets * d_model
V1_MIXED_SCALES = dict(mixed_vote_gain=1.0, mixed_logit_gain=10.0, mixed_crosstalk_free=False)


@dataclass(frozen=True)
class Migration:
    """A rule that rewrites a config.json of format ``source`` into format ``target``."""

    source: str  # the format it reads
    target: str  # the format it produces
    summary: str  # what changed between the two, in one line
    apply: Callable[[dict], dict]  # config -> new config (the input is not modified)


def _n_triplets(kb) -> int | None:
    """Facts in a saved knowledge base's table (entries >= 0), or None if the table is not a list of lists."""
    table = kb.get("table") if isinstance(kb, dict) else None
    if not isinstance(table, list) or not all(isinstance(row, list) for row in table):
        return None
    return sum(1 for row in table for a in row if isinstance(a, int) and a >= 0)


def _from_v1(config: dict) -> dict:
    config = copy.deepcopy(config)
    model = config.get("model")
    if isinstance(model, dict):
        construction, d_model = model.get("construction"), model.get("d_model")
        n = _n_triplets(config.get("knowledge_base"))
        if model.get("memory_impl", "auto") == "auto" and construction in ("pair", "answer") \
                and isinstance(d_model, int) and n is not None:
            model["memory_impl"] = "factored" if n * d_model > V1_FACTORED_ABOVE else "dense"
        scales = model.get("scales")
        if construction == "mixed" and isinstance(scales, dict) and "mixed_vote_gain" not in scales:
            model["scales"] = {**scales, **V1_MIXED_SCALES}
    config["format"] = FAMILY + "2"
    return config


MIGRATIONS: tuple[Migration, ...] = (
    Migration(FAMILY + "1", FAMILY + "2", "memory_impl 'auto' and the pre-2026-12 mixed scales made explicit",
              _from_v1),
)
READABLE = (FORMAT, *(m.source for m in MIGRATIONS))  # every format this library loads


def version(fmt) -> int | None:
    """The version number of a format string of ours (``"icr_interp-checkpoint/2"`` -> 2), else None."""
    if not isinstance(fmt, str) or not fmt.startswith(FAMILY):
        return None
    tail = fmt[len(FAMILY):]
    return int(tail) if tail.isdigit() and len(tail) < 6 else None


def migrate(config: dict) -> dict:
    """``config`` rewritten into :data:`FORMAT` by the rules of :data:`MIGRATIONS` (unchanged if current)."""
    for rule in MIGRATIONS:
        if config.get("format") == rule.source:
            config = rule.apply(config)
    return config
