"""Fake kernels and autograd for the compiled noise ops (schemas in csrc/ops.cpp, section "noise").

noise_perturb has a fused backward: d/dtheta is the row sum of the output gradient, d/dsigma is
sum_p grad_p * eps_p, computed by noise_weighted_sum with (P, d) weights, so the noise is regenerated
and never stored. The weighted sums get the VJP of their reference (their weights are fitness values
in PGPE; a gradient through them is rare, and the reference materialises the noise to give it).
"""
from __future__ import annotations

import torch

from gls.native.autograd import register_reference_vjp
from gls.reference import noise as ref


def _rows(members, antithetic):
    return members.shape[0] * (2 if antithetic else 1)


@torch.library.register_fake("gls::philox4x32_10")
def _philox_fake(counter, key):
    torch._check(counter.shape[-1] == 4 and key.shape[-1] == 2, lambda: "philox4x32_10: counter must be (..., 4) and key (..., 2)")
    return torch.empty_like(counter)


@torch.library.register_fake("gls::noise_normal")
def _normal_fake(members, d, seed, purpose, antithetic):
    torch._check(d >= 1, lambda: f"noise_normal: the number of elements d must be >= 1, got {d}")
    return members.new_empty((_rows(members, antithetic), d), dtype=torch.float32)


@torch.library.register_fake("gls::noise_perturb")
def _perturb_fake(theta, sigma, members, seed, purpose, antithetic):
    torch._check(theta.dim() == 1, lambda: "noise_perturb: theta must be a flat (d,) vector")
    return theta.new_empty((_rows(members, antithetic), theta.shape[0]))


def _weighted_sum_fake(weights, sigma, members, d, seed, purpose, antithetic):
    torch._check(weights.shape[0] == _rows(members, antithetic), lambda: "noise weighted sum: weights must have one row per population member")
    return weights.new_empty((d,))


torch.library.register_fake("gls::noise_weighted_sum")(_weighted_sum_fake)
torch.library.register_fake("gls::noise_sigma_weighted_sum")(_weighted_sum_fake)


def _perturb_setup_context(ctx, inputs, output):
    theta, sigma, members, seed, purpose, antithetic = inputs
    ctx.save_for_backward(sigma, members)
    ctx.noise = (seed, purpose, antithetic)


def _perturb_backward(ctx, grad):
    sigma, members = ctx.saved_tensors
    grad_theta = grad.sum(0) if ctx.needs_input_grad[0] else None
    grad_sigma = None
    if ctx.needs_input_grad[1]:
        one = torch.ones((), dtype=grad.dtype, device=grad.device)
        g = torch.ops.gls.noise_weighted_sum(grad.contiguous(), one, members, grad.shape[1], *ctx.noise)
        grad_sigma = g.sum().reshape(sigma.shape) if sigma.numel() == 1 else g.reshape(sigma.shape)
    return grad_theta, grad_sigma, None, None, None, None


torch.library.register_autograd("gls::noise_perturb", _perturb_backward, setup_context=_perturb_setup_context)
register_reference_vjp("gls::noise_weighted_sum", ref.noise_weighted_sum, tensor_args=(0, 1))
register_reference_vjp("gls::noise_sigma_weighted_sum", ref.noise_sigma_weighted_sum, tensor_args=(0, 1))
