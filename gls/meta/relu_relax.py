"""relu_relax: input check, fake kernel and closed-form backward (the VJP of gls.reference.bound_ops.relu_relax).

Only the upper line of an unstable neuron (l < 0 < u) depends differentiably on (l, u): a_l and c_l are
piecewise constant. ibp/hbox: c_u = u. Triangle (crown-ibp, deeppoly): a_u = s = u / d with d = u - l,
so ds/dl = s / d and ds/du = (1 - s) / d; c_u is the larger of -l s and u (1 - s), which are equal in
exact arithmetic, so whichever the reference selects has dc_u/dl = -s^2 and dc_u/du = (1 - s)^2. The
gradients are those of the reference's autograd up to rounding (tests/test_relu_relax.py), without
re-running it: the reference's VJP took 3 ms of a 40 ms DeepPoly training step on cnn3.
"""
from __future__ import annotations

import torch

from gls_kernels.common import relax_code


def check(l, u, method) -> None:
    """The op's contract: a known method and bounds of one shape."""
    relax_code(method)
    if l.shape != u.shape:
        raise ValueError(f"relu_relax: l and u must have the same shape, got {tuple(l.shape)} and {tuple(u.shape)}")


def fake(l, u, method):
    check(l, u, method)
    return tuple(torch.empty_like(l, memory_format=torch.contiguous_format) for _ in range(4))


def setup_context(ctx, inputs, output):
    l, u, method = inputs
    ctx.save_for_backward(l, u)
    ctx.code = relax_code(method)


def backward(ctx, _g_al, _g_cl, g_au, g_cu):
    l, u = ctx.saved_tensors
    unstable = (l < 0) & (u > 0)
    if ctx.code <= 1:  # the box: c_u = u
        g_l, g_u = torch.zeros_like(l), torch.where(unstable, g_cu, 0)
    else:
        r = 1 / torch.where(unstable, u - l, 1)
        s = u * r
        g_l = torch.where(unstable, s * (g_au * r - g_cu * s), 0)
        g_u = torch.where(unstable, (1 - s) * (g_au * r + g_cu * (1 - s)), 0)
    need = ctx.needs_input_grad
    return g_l if need[0] else None, g_u if need[1] else None, None


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::relu_relax")(fake)
    torch.library.register_autograd(f"{namespace}::relu_relax", backward, setup_context=setup_context)
