"""noise_sigma_weighted_sum: input check, fake kernel and autograd (the VJP of gls.reference.noise.noise_sigma_weighted_sum).

Its weights are fitness values in PGPE; a gradient through them is rare, and the reference materialises
the noise to give it.
"""
from __future__ import annotations

import torch

from gls.meta._noise import check_weighted_sum
from gls.meta._vjp import register_reference_vjp
from gls.reference import noise as ref


def fake(weights, sigma, members, d, seed, purpose, antithetic):
    check_weighted_sum(weights, sigma, members, d, antithetic, "noise_sigma_weighted_sum")
    return weights.new_empty((d,))


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::noise_sigma_weighted_sum")(fake)
    register_reference_vjp(f"{namespace}::noise_sigma_weighted_sum", ref.noise_sigma_weighted_sum, tensor_args=(0, 1))
