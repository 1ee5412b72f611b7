"""The pairing test without a blind spot: closed form, calibration, power, and the controls beside it."""

import itertools
import math

import pytest
import torch

from icr_interp.analysis.scoring.adjacency_control import adjacency_control
from icr_interp.analysis.scoring.pairing_evidence import pairing_evidence
from icr_interp.analysis.scoring.pairing_null import NULL_ALPHA, NULL_DRAWS, pairing_test, pairings
from icr_interp.analysis.scoring.pairing_test import PAIRING_MIN_MASS, pairing_test_rows, row_effects
from icr_interp.analysis.scoring.pairwise_form import pairing_scores, pairwise_tv
from icr_interp.analysis.scoring.position_control import position_control


def dirichlet(alpha: float, shape: tuple, slots: int, gen: torch.Generator) -> torch.Tensor:
    g = torch._standard_gamma(torch.full((*shape, slots), alpha, dtype=torch.float64), generator=gen)
    return g / g.sum(-1, keepdim=True)


def planted(shape: tuple, k: int, lam: float, gen: torch.Generator, mass: float = 0.1):
    """Rows with ``mass`` on the pairs: Dirichlet(1) context, each answer mixed a fraction ``lam`` towards its subject."""
    c = dirichlet(1.0, shape, 2 * k, gen)
    s, a = c[..., :k], (1 - lam) * c[..., k:] + lam * c[..., :k]
    total = (s + a).sum(-1, keepdim=True)
    return mass * s / total, mass * a / total


def ks_uniform_p(p: torch.Tensor) -> float:
    """Kolmogorov-Smirnov p-value of the sample against U(0, 1) (asymptotic Kolmogorov distribution)."""
    x, n = p.double().sort().values, p.numel()
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d = float(torch.maximum(i / n - x, x - (i - 1) / n).max())
    t = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    return max(0.0, min(1.0, 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * t * t) for j in range(1, 101))))


@pytest.mark.parametrize("k", [2, 3, 4])
def test_effect_is_the_derangement_mean_in_closed_form(k):
    gen = torch.Generator().manual_seed(k)
    rows = dirichlet(0.7, (20,), 2 * k + 2, gen)
    s, a = rows[:, :k], rows[:, k:2 * k]
    m = (s + a).sum(-1)
    derangements = [p for p in itertools.permutations(range(k)) if all(p[i] != i for i in range(k))]
    for r in range(20):
        l1 = lambda pi: sum(abs(float(s[r, i] - a[r, pi[i]])) for i in range(k)) / float(m[r])  # noqa: E731
        brute = (sum(l1(p) for p in derangements) / len(derangements) - l1(range(k))) / 2
        assert float(row_effects(s[r:r + 1], a[r:r + 1])[0]) == pytest.approx(brute, abs=1e-12)


def test_the_blind_spot_of_the_tv_score_and_none_here():
    # Pair mass 0.1 (so sum max(s, a) <= 1/2): every pairing scores 1 - TV = M exactly, whatever the balance.
    gen = torch.Generator().manual_seed(0)
    s, a = planted((128,), 4, 1.0, gen)  # a_i = s_i: perfectly paired
    assert torch.allclose(1 - pairwise_tv(s, a), (s + a).sum(-1))
    scores = pairing_scores(s, a, pairings(4))
    assert torch.allclose(scores, scores[..., :1].expand_as(scores))  # the TV score cannot see the pairing ...
    assert float(pairing_test(scores[..., 0], scores)) == 1.0  # ... so its test gives p = 1
    t = pairing_test_rows(s, a)  # the renormalised rows can
    assert float(t.p_value) == pytest.approx(1 / (1 + NULL_DRAWS)) and float(t.effect) > 0.2
    assert float(t.effect_mass) == pytest.approx(0.1 * float(t.effect), rel=1e-5)
    assert float(t.distance) == pytest.approx(0.9, abs=1e-6)  # the distance to the family stays a distance


def test_calibration_on_1000_null_row_sets():
    # 1,000 sets of 64 rows whose answers ignore the pairing (Dirichlet masses, 10% on the pairs): p ~ U(0, 1).
    gen = torch.Generator().manual_seed(1)
    s, a = planted((1000, 64), 3, 0.0, gen)
    p = pairing_test_rows(s, a, seed=2).p_value
    assert ks_uniform_p(p) > 0.01, ks_uniform_p(p)
    assert float((p <= NULL_ALPHA).float().mean()) <= NULL_ALPHA + 0.005  # false positives at alpha (+ MC slack)
    assert float((p <= 0.05).float().mean()) <= 0.065
    # The adjacency control on the same rows (slots exchangeable: pseudo-pairs as balanced as true ones).
    c = adjacency_control(s, a, seed=3).p_value
    assert ks_uniform_p(c) > 0.01 and float((c <= NULL_ALPHA).float().mean()) <= NULL_ALPHA + 0.005
    # The position control: prompts exchangeable.
    q = position_control(s[:300], a[:300], seed=4).p_value
    assert ks_uniform_p(q) > 0.01 and float((q <= NULL_ALPHA).float().mean()) <= NULL_ALPHA + 0.01


def test_power_at_a_balance_gain_of_002_in_attention_mass_with_10_percent_pair_mass():
    # A planted pairing whose within-pair balance 2 sum_i min(s_i, a_i) is 0.02 above the re-paired one, in
    # attention mass, in rows with 10% on the pairs: the TV score is blind there, this test detects it at n = 128.
    gen = torch.Generator().manual_seed(5)
    lam = 0.53  # measured: balance gain 0.0200 in attention mass (renormalised 0.20)
    s_big, a_big = planted((100000,), 4, lam, gen)
    gain = float((2 * row_effects(s_big, a_big) * 0.1).mean())  # balance gain over derangements, in mass
    assert gain == pytest.approx(0.02, abs=0.001)
    s, a = planted((50, 128), 4, lam, gen)
    t = pairing_test_rows(s, a, seed=6)
    assert float((t.p_value <= NULL_ALPHA).float().mean()) >= 0.95  # power over 50 independent sets of 128 rows
    assert float(t.effect_mass.mean()) == pytest.approx(gain / 2, rel=0.1)  # effect: half the balance gain


def test_evidence_rule_needs_the_adjacency_control_and_the_mass_floor():
    gen = torch.Generator().manual_seed(7)
    k, n = 4, 128
    # A smooth positional profile plus noise: beats the re-pairing null, not the adjacency control.
    profile = torch.linspace(1, 2, 2 * k, dtype=torch.float64)
    ctx = profile * (1 + 0.05 * torch.randn(n, 2 * k, generator=gen, dtype=torch.float64))
    ctx = ctx / ctx.sum(-1, keepdim=True)
    ev = pairing_evidence(ctx[:, 0::2], ctx[:, 1::2])
    assert float(ev.test.p_value) <= NULL_ALPHA and float(ev.control.p_value) > NULL_ALPHA and not bool(ev.shown)
    # The paper's pattern with content-driven weights: passes all, in mass.
    beta = dirichlet(1.0, (n,), k, gen)
    ev = pairing_evidence(beta / 2, beta / 2)
    assert bool(ev.shown) and float(ev.test.effect_mass) >= PAIRING_MIN_MASS
    assert float(ev.position.p_value) <= NULL_ALPHA
    # The same pattern on 1% of the attention: significant, but below the floor in attention mass.
    ev = pairing_evidence(beta / 200, beta / 200)
    assert float(ev.test.p_value) <= NULL_ALPHA and float(ev.test.effect_mass) < PAIRING_MIN_MASS
    assert not bool(ev.shown) and ev.at()["effect_mass_ci"][1] < PAIRING_MIN_MASS


def test_bad_input_is_one_line():
    with pytest.raises(ValueError, match=">= 0"):
        pairing_test_rows(-torch.ones(3, 2), torch.zeros(3, 2))
    t = pairing_test_rows(torch.zeros(4, 3), torch.zeros(4, 3))  # no pair mass: nothing to show
    assert float(t.p_value) == 1.0 and float(t.effect) == 0.0
