"""noise_perturb: input check, fake kernel and its fused backward, shared by every namespace.

d/dtheta is the row sum of the output gradient; d/dsigma is sum_p grad_p * eps_p, computed by the same
namespace's noise_weighted_sum with (P, d) weights, so the noise is regenerated and never stored.
"""
from __future__ import annotations

import torch

from gls.meta._noise import check_members, check_sigma, check_theta, rows

NEEDS = ("noise_weighted_sum",)  # called by the backward


def check(theta, sigma, members) -> None:
    check_theta(theta)
    check_members(members, "noise_perturb")
    check_sigma(sigma, theta.shape[0], "noise_perturb")


def fake(theta, sigma, members, seed, purpose, antithetic):
    check(theta, sigma, members)
    return theta.new_empty((rows(members, antithetic), theta.shape[0]))


def _setup_context(ctx, inputs, output):
    theta, sigma, members, seed, purpose, antithetic = inputs
    ctx.save_for_backward(sigma, members)
    ctx.noise = (seed, purpose, antithetic)


def _backward_in(namespace: str):
    def backward(ctx, grad):
        sigma, members = ctx.saved_tensors
        grad_theta = grad.sum(0) if ctx.needs_input_grad[0] else None
        grad_sigma = None
        if ctx.needs_input_grad[1]:
            one = torch.ones((), dtype=grad.dtype, device=grad.device)
            g = getattr(torch.ops, namespace).noise_weighted_sum(grad.contiguous(), one, members, grad.shape[1], *ctx.noise)
            grad_sigma = g.sum().reshape(sigma.shape) if sigma.numel() == 1 else g.reshape(sigma.shape)
        return grad_theta, grad_sigma, None, None, None, None

    return backward


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::noise_perturb")(fake)
    torch.library.register_autograd(f"{namespace}::noise_perturb", _backward_in(namespace), setup_context=_setup_context)
