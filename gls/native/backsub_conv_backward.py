"""Backward of gls::backsub_conv_relu by its closed form (kernel gls::backsub_conv_relu_backward).

Forward (gls.reference.bound_ops.backsub_conv_relu): g = conv_transpose(lam, W) on each window,
A = a_l where g >= 0 else a_u (likewise C from c_l, c_u; both 0 outside the map), lam' = g A,
bias = sum g C + lam . b. With upstream gradients G (of lam') and h (of bias): dg = G A + h C;
dlam = conv(dg, W) + h b; dW = sum over rows of lam (x) dg; db = h sum_window lam; the line
gradients G g and h g go to a_l, c_l where g >= 0 and to a_u, c_u elsewhere, summed over the rows
of each (member, sample), and over the population where an input is shared (P = 1). This is exactly
the reference's autograd (torch.where routes the whole gradient to the selected branch). The kernel
recomputes g per row instead of storing it; under create_graph (double backward) the reference's
autograd runs instead.
"""
from __future__ import annotations

import torch

from gls.native.backsub_backward import _reduce_members
from gls.reference import bound_ops as ref


def setup_context(ctx, inputs, output):
    lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation = inputs
    ctx.save_for_backward(lam, W, b, a_l, c_l, a_u, c_u, origin)
    ctx.geometry = (stride, dilation)


def _reference_grads(ctx, inputs, g_lam, g_bias):
    need = ctx.needs_input_grad
    args = [t.detach().requires_grad_(need[i]) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            for i, t in enumerate(inputs)]
    leaves = [i for i, t in enumerate(args) if isinstance(t, torch.Tensor) and t.requires_grad]
    out = ref.backsub_conv_relu(*args, *ctx.geometry)
    got = torch.autograd.grad(out, [args[i] for i in leaves], (g_lam, g_bias), create_graph=True, allow_unused=True)
    grads = [None] * 10
    for i, g in zip(leaves, got):
        grads[i] = torch.zeros_like(args[i]) if g is None else g
    return tuple(grads)


def backward(ctx, g_lam, g_bias):
    inputs = ctx.saved_tensors
    lam, W, b, a_l, c_l, a_u, c_u, origin = inputs
    if g_lam is None:  # lam' unused (a concretisation): its shape from the geometry
        (s0, s1), (d0, d1) = ctx.geometry
        kh, kw = W.shape[-2:]
        h, w = lam.shape[-2:]
        g_lam = lam.new_zeros(*lam.shape[:3], W.shape[2], (h - 1) * s0 + d0 * (kh - 1) + 1, (w - 1) * s1 + d1 * (kw - 1) + 1)
    g_bias = lam.new_zeros(lam.shape[:3]) if g_bias is None else g_bias
    if torch.is_grad_enabled():
        return _reference_grads(ctx, inputs, g_lam, g_bias)
    d_lam, d_W, d_b, *d_lines = torch.ops.gls.backsub_conv_relu_backward(
        lam, W, b, a_l, c_l, a_u, c_u, origin, *ctx.geometry, g_lam.contiguous(), g_bias.contiguous())
    need = ctx.needs_input_grad
    grads = [d_lam if need[0] else None, _reduce_members(d_W, W) if need[1] else None,
             _reduce_members(d_b, b) if need[2] and b is not None else None]
    grads += [_reduce_members(d, like) if need[i] else None for i, (d, like) in
              enumerate(zip(d_lines, (a_l, c_l, a_u, c_u)), start=3)]
    return tuple(grads) + (None, None, None)
