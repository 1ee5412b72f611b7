"""The null of the pairwise score: the same rows with the pairing scrambled, and a test against it.

A near-uniform attention row is close to the pairwise family without caring
which subject goes with which answer.  The null keeps everything about the
rows except the pairing: the pairwise score of the rows when pair ``i`` is
``(s_i, a_pi(i))``, averaged over permutations ``pi`` of the k pairs
(:func:`pairings`; the scores themselves are
:func:`icr_interp.analysis.scoring.pairwise_form.pairing_scores`).  :func:`pairing_test` asks, by
randomisation over examples, whether the true pairing scores higher than the
null.  Derivation and what each kind of row gives: docs/theory.md, "Template
scores against a null".
"""

import itertools
import math

import torch
from jaxtyping import Float, Int
from torch import Tensor

NULL_MAX_PERMUTATIONS = 720  # the null enumerates all k! pairings up to this many (k <= 6), else samples this many
NULL_DRAWS = 2000  # randomisation draws of the test over examples (p-value resolution 1 / 2001)
NULL_ALPHA = 0.01  # "pairwise" needs the true pairing to beat the null at this level ...
NULL_MIN_EFFECT = 0.05  # ... and by at least this much score: pairwise - pairwise_null
NULL_SEED = 0  # seeds the permutation sample (k > 6) and the randomisation draws: same rows, same p-value
TIE_TOL = 1e-6  # draws within this of the observed statistic count as ties (float sums of one set of numbers)
_CHUNK = 1 << 22  # elements per chunk of the draw tensors (bounds memory, not a per-example loop)


def pairings(k: int, generator: torch.Generator | None = None) -> Int[Tensor, "perm pair"]:
    """The permutations ``pi`` of ``k`` pairs the null averages over (row ``pi``: pair i's answer is ``a_pi(i)``).

    All ``k!`` (identity first) when ``k! <= NULL_MAX_PERMUTATIONS``; otherwise
    that many uniform random permutations drawn from ``generator`` (default:
    seeded with :data:`NULL_SEED`), an unbiased sample of the same average.
    """
    if math.factorial(k) <= NULL_MAX_PERMUTATIONS:
        return torch.tensor(list(itertools.permutations(range(k))), dtype=torch.long).reshape(-1, k)
    gen = generator if generator is not None else torch.Generator().manual_seed(NULL_SEED)
    return torch.rand(NULL_MAX_PERMUTATIONS, k, generator=gen).argsort(-1)


def draw_means(table: Float[Tensor, "*lead batch column"],
               picks: Int[Tensor, "draw batch"]) -> Float[Tensor, "*lead draw"]:
    """A randomisation distribution read off a per-example table: ``mean_b table[..., b, picks[d, b]]`` per draw d.

    ``picks`` says which column each example takes in each draw: independent uniform columns give every example
    its own random pairing (the pairing null and test); a permutation of the examples re-pairs them across
    prompts (the position control).  The gathered ``[*lead draw batch]`` tensor is built in chunks of at most
    :data:`_CHUNK` elements, so memory stays bounded for any number of draws.
    """
    examples = torch.arange(picks.shape[-1], device=table.device)
    step = max(1, _CHUNK // max(1, table[..., 0].numel()))
    return torch.cat([table[..., examples, chunk].mean(-1) for chunk in picks.to(table.device).split(step)], dim=-1)


def uniform_picks(n_columns: int, draws: int, n_batch: int, generator: torch.Generator) -> Int[Tensor, "draw batch"]:
    """One uniform column per example and draw, independently."""
    return torch.randint(n_columns, (draws, n_batch), generator=generator)


def pairing_test(true: Float[Tensor, "*lead batch"], permuted: Float[Tensor, "*lead batch perm"],
                 generator: torch.Generator | None = None) -> Float[Tensor, "*lead"]:
    """One-sided randomisation p-value that the true pairing scores above the null, over examples.

    Statistic: ``mean_b (true_b - mean_pi permuted_b(pi))``.  Under "the model
    ignores the pairing" each example's true score is one uniform draw of its
    ``permuted`` scores, so each of :data:`NULL_DRAWS` draws gives every
    example its own random pairing; ``p = (1 + #{draw >= observed}) / (1 +
    NULL_DRAWS)``.
    """
    gen = generator if generator is not None else torch.Generator().manual_seed(NULL_SEED)
    null = permuted.mean(-1)
    observed = (true - null).mean(-1)
    picks = uniform_picks(permuted.shape[-1], NULL_DRAWS, permuted.shape[-2], gen)
    stat = draw_means(permuted, picks) - null.mean(-1)[..., None]  # [*lead draw]
    beats = (stat >= observed[..., None] - TIE_TOL).sum(-1).to(observed.dtype)
    return (1 + beats) / (1 + NULL_DRAWS)
