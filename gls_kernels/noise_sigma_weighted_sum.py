"""Triton op gls_triton::noise_sigma_weighted_sum: sum_p w_p * sigma * (eps_p^2 - 1), the PGPE stdev reduction.

Kernel in noise_weighted_sum.py (SIGMA_TERM on); fake kernel and backward: gls/meta/noise_sigma_weighted_sum.py.
"""
import torch
from torch import Tensor

from gls_kernels.noise_weighted_sum import check, weighted_sum


@torch.library.custom_op("gls_triton::noise_sigma_weighted_sum", mutates_args=())
def noise_sigma_weighted_sum(weights: Tensor, sigma: Tensor, members: Tensor, d: int, seed: int, purpose: int, antithetic: bool) -> Tensor:
    """(d,) sum_p weights_p * ((sigma eps_p)^2 - sigma^2) / sigma, as sigma * (eps_p^2 - 1)."""
    check(weights, sigma, members, d, antithetic, "noise_sigma_weighted_sum")
    return weighted_sum(weights, sigma, members, d, seed, purpose, antithetic, sigma_term=True)

