"""Derived seeds: every random stream of a run comes from (the run's seed, a purpose).

One run seed drives everything.  Streams that must be independent get their
own purpose, and :func:`derive_seed` is the one function that turns (seed,
purpose) into a generator seed, so no module invents its own offset (the first release's two offset streams are
named in :data:`OFFSETS` and drawn through :func:`offset_seed`).

The knowledge base, the model (basis, attention start), the pretrained
memory's fit and the training set use the run seed itself (``KnowledgeBase.random
(seed=s)``, ``build_model(seed=s)`` and ``finetune(seed=s)`` then mean what a
user expects).  These streams never collide because each is drawn by a
different procedure.  Held-out prompts must never replay the training set,
which is drawn with ``manual_seed(seed)`` by the same sampler, so they -- and
the other analysis streams -- are salted: the seed XOR a fixed 64-bit salt.
"""

MAX_SEED = 2**63  # seeds are non-negative and fit a signed 64-bit integer (torch.Generator.manual_seed)

SALTS = {  # purpose -> XOR salt (0: the run seed itself)
    "knowledge": 0,
    "model": 0,
    "pretrain": 0,
    "train": 0,
    "eval": 0x5EED_0000_0000,  # held-out prompts (evaluate)
    "templates": 0x7E3B_0000_0000,  # prompts whose attention is scored
    "analysis": 0xA5A5_0000_0000,  # prompts of the probes and case-study analyses
    "corrupt": 0xC022_0000_0000,  # corrupted counterparts of analysis prompts
}


EVAL_SALT = SALTS["eval"]  # the held-out stream's salt, by its first name

# Streams of the first release drawn with a fixed *offset* instead of a salt. Changing them would change every
# pinned number (tests/safety/test_reference_pinned.py), so they keep their values and get names here.
OFFSETS = {  # purpose -> added to the run seed
    "attention_start": 1,  # the random part of the attention start (build_model)
    "minibatch_order": 7919,  # the order fine-tuning visits a fixed training set (finetune)
    "head_scores": 1,  # the prompts the heads case study scores (experiments.shapes.measure)
}


def offset_seed(seed: int, purpose: str) -> int:
    """The generator seed of an offset stream ``purpose`` (:data:`OFFSETS`) in the run seeded ``seed``."""
    if purpose not in OFFSETS:
        raise ValueError(f"unknown offset purpose {purpose!r}; purposes are {', '.join(OFFSETS)}")
    return check_seed(seed) + OFFSETS[purpose]


def derive_seed(seed: int, purpose: str) -> int:
    """The generator seed of stream ``purpose`` in the run seeded ``seed``.

    Raises:
        ValueError: for an unknown purpose or a seed outside [0, 2**63).
    """
    if purpose not in SALTS:
        raise ValueError(f"unknown seed purpose {purpose!r}; purposes are {', '.join(SALTS)}")
    check_seed(seed)
    return seed ^ SALTS[purpose]


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` if it is an integer in [0, 2**63); a one-line ValueError otherwise."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < MAX_SEED:
        raise ValueError(f"{what} must be an integer in [0, 2**63), got {seed!r}")
    return seed
