"""Backward of gls::backsub_linear_relu by its closed form, instead of the reference's autograd graph.

Forward (gls.reference.bound_ops.backsub_linear_relu): g = lam W, pos = max(g, 0), neg = min(g, 0),
lam' = pos a_l + neg a_u, bias = sum_j (pos c_l + neg c_u) + lam . b. With upstream gradients G (of lam')
and h (of bias):
  dL/dg = (G a_l + h c_l) where g > 0, (G a_u + h c_u) where g < 0, and 0 where g == 0 (torch's
  clamp(min=0) and clamp(max=0) both pass no gradient at 0, so this matches the reference exactly);
  dlam = dL/dg W^T + h b,  dW = lam^T dL/dg,  db = sum_rows h lam,
  da_l = sum_s G pos,  da_u = sum_s G neg,  dc_l = sum_s h pos,  dc_u = sum_s h neg,
summed over the population where an input is shared (P = 1).

dL/dg and the relaxation gradients come from the fused kernel gls::backsub_linear_relu_backward (g
recomputed blockwise, one pass) when the device has it; the two GEMMs for dlam and dW stay with
torch.matmul. Under create_graph (double backward) the same formulas run as differentiable torch ops.
"""
from __future__ import annotations

import torch

from gls import native


def _reduce_members(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum `grad` over the population axis where `like` is shared by the population (size 1)."""
    return grad.sum(0, keepdim=True) if like.shape[0] == 1 and grad.shape[0] != 1 else grad


def _epilogue_torch(lam, W, g_lam, g_bias, a_l, c_l, a_u, c_u):
    """dL/dg and the relaxation gradients (P,B,N_in) in differentiable torch ops."""
    P, B, S, n_out = lam.shape
    g = torch.matmul(lam.reshape(P, B * S, n_out), W).reshape(P, B, S, W.shape[-1])
    h = g_bias.unsqueeze(-1)
    on_pos = g_lam * a_l.unsqueeze(2) + h * c_l.unsqueeze(2)
    on_neg = g_lam * a_u.unsqueeze(2) + h * c_u.unsqueeze(2)
    dg = torch.where(g > 0, on_pos, torch.where(g < 0, on_neg, torch.zeros_like(on_pos)))
    pos, neg = g.clamp(min=0), g.clamp(max=0)
    return dg, (g_lam * pos).sum(2), (h * pos).sum(2), (g_lam * neg).sum(2), (h * neg).sum(2)


def _fused_available(device: torch.device) -> bool:
    return native.has_kernel("backsub_linear_relu_backward", "CUDA" if device.type == "cuda" else "CPU")


def setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def backward(ctx, g_lam, g_bias):
    lam, W, b, a_l, c_l, a_u, c_u = ctx.saved_tensors
    need = ctx.needs_input_grad
    P, B, S, n_out = lam.shape
    n_in = W.shape[-1]
    g_lam = lam.new_zeros(P, B, S, n_in) if g_lam is None else g_lam
    g_bias = lam.new_zeros(P, B, S) if g_bias is None else g_bias
    if torch.is_grad_enabled() or not _fused_available(lam.device):
        dg, *d_relax = _epilogue_torch(lam, W, g_lam, g_bias, a_l, c_l, a_u, c_u)
    else:
        dg, *d_relax = torch.ops.gls.backsub_linear_relu_backward(lam, W, g_lam, g_bias, a_l, c_l, a_u, c_u)
    grads = [None] * 7
    if need[0]:
        d_lam = torch.matmul(dg.reshape(P, B * S, n_in), W.transpose(-1, -2)).reshape(P, B, S, n_out)
        grads[0] = d_lam + g_bias.unsqueeze(-1) * b[:, None, None, :] if b is not None else d_lam
    if need[1]:
        rows = lam.reshape(P, B * S, n_out)
        grads[1] = _reduce_members(torch.matmul(rows.transpose(-1, -2), dg.reshape(P, B * S, n_in)), W)
    if need[2] and b is not None:
        grads[2] = _reduce_members((g_bias.unsqueeze(-1) * lam).sum((1, 2)), b)
    for i, (d, like) in enumerate(zip(d_relax, (a_l, c_l, a_u, c_u)), start=3):
        if need[i]:
            grads[i] = _reduce_members(d, like)
    return tuple(grads)
