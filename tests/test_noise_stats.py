"""Statistics of the counter-based Gaussian stream on >= 10^6 normals (default backend: cpp when built).

Bounds are about 5 standard errors (or the 0.1 % Kolmogorov-Smirnov critical value) so a correct
generator fails with negligible probability; the seeds are fixed, so the outcome is deterministic.
"""
import math

import pytest
import torch
from scipy import stats

from gls import noise

P, D = 64, 16384  # 2^20 normals


@pytest.fixture(scope="module")
def population():
    return noise.population_normal(P, D, seed=20240531, purpose=0).double()


def test_moments(population):
    x = population.flatten()
    n = x.numel()
    assert n >= 10**6
    assert abs(x.mean().item()) < 5 / math.sqrt(n)
    assert abs(x.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((x**4).mean().item() - 3) < 5 * math.sqrt(96 / n)  # kurtosis of a normal; Var(x^4) = 96
    assert abs((x.abs() > 3).double().mean().item() - 2 * stats.norm.sf(3)) < 5 * math.sqrt(2 * stats.norm.sf(3) / n)


def test_kolmogorov_smirnov(population):
    x = population.flatten().numpy()
    statistic = stats.kstest(x, "norm").statistic
    assert statistic < 1.95 / math.sqrt(x.size)  # 0.1 % critical value


def test_no_correlation_between_neighbouring_members(population):
    z = (population - population.mean(1, keepdim=True)) / population.std(1, keepdim=True)
    r = (z[:-1] * z[1:]).mean(1)  # correlation of member p with p + 1, one per p
    assert r.abs().max().item() < 5 / math.sqrt(D)
    assert abs(r.mean().item()) < 5 / math.sqrt(D * (P - 1))


def test_no_correlation_within_a_stream(population):
    for lag in (1, 2, 3, 4):  # lanes of one pair, across pairs, across blocks
        r = (population[:, :-lag] * population[:, lag:]).mean().item()
        assert abs(r) < 5 / math.sqrt(P * (D - lag))


def test_neighbouring_seeds_and_purposes_uncorrelated():
    a = noise.population_normal(16, 65536, seed=7).double()
    for b in (noise.population_normal(16, 65536, seed=8).double(), noise.population_normal(16, 65536, seed=7, purpose=1).double()):
        assert abs((a * b).mean().item()) < 5 / math.sqrt(a.numel())


def test_antithetic_symmetry_is_exact():
    eps = noise.population_normal(8, 1001, seed=3, antithetic=True)
    assert torch.equal(eps[4:], -eps[:4])
    pert = noise.perturb(torch.zeros(1001), torch.rand(1001), 3, 8, antithetic=True)
    assert torch.equal(pert[4:], -pert[:4])
    w = torch.randn(4)
    # equal pair weights cancel in the centre sum (up to summation rounding) and count twice in the stdev sum
    both = torch.cat([w, w])
    torch.testing.assert_close(noise.noise_weighted_sum(both, 0.5, 3, 1001, antithetic=True), torch.zeros(1001), rtol=0, atol=1e-5)
    one_side = noise.noise_sigma_weighted_sum(torch.cat([w, torch.zeros(4)]), 0.5, 3, 1001, antithetic=True)
    torch.testing.assert_close(noise.noise_sigma_weighted_sum(both, 0.5, 3, 1001, antithetic=True), 2 * one_side)
