"""What the noise-op tests share: the materialised population noise the fused ops are checked against."""
import torch

from gls import noise

SEED_BIG = 0xFEDCBA9876543210  # >= 2^63: exercises the signed reinterpretation in the op schemas


def materialised(P, d, seed, antithetic, offset=0):
    return noise.population_normal(P, d, seed=seed, member_offset=offset, antithetic=antithetic, backend="reference").double()


def fused_case(d, sigma_kind):
    """(sigma, theta) in float64: sigma a (d,) vector or a scalar."""
    sigma = torch.rand(d, dtype=torch.float64) + 0.1 if sigma_kind == "vector" else torch.tensor(0.37, dtype=torch.float64)
    return sigma, torch.randn(d, dtype=torch.float64)
