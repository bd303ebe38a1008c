"""backsub_linear_relu: input check, fake kernel and its closed-form backward, shared by every namespace.

Also the fake of the helper op gls::backsub_linear_relu_backward (csrc only), the fused epilogue that
this backward calls where the device has it.

Forward (gls.reference.bound_ops.backsub_linear_relu): g = lam W, pos = max(g, 0), neg = min(g, 0),
lam' = pos a_l + neg a_u, bias = sum_j (pos c_l + neg c_u) + lam . b. With upstream gradients G (of lam')
and h (of bias):
  dL/dg = (G a_l + h c_l) where g > 0, (G a_u + h c_u) where g < 0, and 0 where g == 0 (torch's
  clamp(min=0) and clamp(max=0) both pass no gradient at 0, so this matches the reference exactly);
  dlam = dL/dg W^T + h b,  dW = lam^T dL/dg,  db = sum_rows h lam,
  da_l = sum_s G pos,  da_u = sum_s G neg,  dc_l = sum_s h pos,  dc_u = sum_s h neg,
summed over the population where an input is shared (P = 1).

dL/dg and the relaxation gradients come from the fused kernel gls::backsub_linear_relu_backward (g
recomputed blockwise, one pass) when gls._C has it for the device, whichever backend ran the forward;
the two GEMMs for dlam and dW stay with torch.matmul. Under create_graph (double backward) the same
formulas run as differentiable torch ops (epilogue_torch).
"""
from __future__ import annotations

import torch

from gls import native
from gls.meta import fused_kernel
from gls.meta._population import reduce_members


def check(lam, W, b, a_l, c_l, a_u, c_u) -> tuple[int, int, int, int, int]:
    """The op's contract (shapes); returns (P, B, S, N_out, N_in)."""
    if lam.dim() != 4 or W.dim() != 3:
        raise ValueError(f"backsub_linear_relu: lam must be 4-D and W 3-D, got shapes {tuple(lam.shape)} and {tuple(W.shape)}")
    P, B, S, n_out = lam.shape
    if W.shape[0] not in (1, P) or W.shape[1] != n_out:
        raise ValueError(f"backsub_linear_relu: W must have shape (1 or P={P}, N_out={n_out}, N_in), got {tuple(W.shape)}")
    n_in = W.shape[2]
    if b is not None and (b.dim() != 2 or b.shape[0] not in (1, P) or b.shape[1] != n_out):
        raise ValueError(f"backsub_linear_relu: b must have shape (1 or P={P}, N_out={n_out}), got {tuple(b.shape)}")
    for name, t in (("a_l", a_l), ("c_l", c_l), ("a_u", a_u), ("c_u", c_u)):
        if t.dim() != 3 or t.shape[0] not in (1, P) or tuple(t.shape[1:]) != (B, n_in):
            raise ValueError(f"backsub_linear_relu: {name} must have shape (1 or P, B, N_in) = (1 or {P}, {B}, {n_in}), got {tuple(t.shape)}")
    return P, B, S, n_out, n_in


def fake(lam, W, b, a_l, c_l, a_u, c_u):
    P, B, S, _, n_in = check(lam, W, b, a_l, c_l, a_u, c_u)
    return lam.new_empty((P, B, S, n_in)), lam.new_empty((P, B, S))


def backward_fake(lam, W, grad_lam, grad_bias, a_l, c_l, a_u, c_u):
    P, B, _, _ = lam.shape
    relax = lam.new_empty((P, B, W.shape[-1]))
    return torch.empty_like(grad_lam), relax, torch.empty_like(relax), torch.empty_like(relax), torch.empty_like(relax)


def epilogue_torch(lam, W, g_lam, g_bias, a_l, c_l, a_u, c_u):
    """dL/dg and the relaxation gradients (P,B,N_in) in differentiable torch ops (the fused kernel's definition)."""
    P, B, S, n_out = lam.shape
    g = torch.matmul(lam.reshape(P, B * S, n_out), W).reshape(P, B, S, W.shape[-1])
    h = g_bias.unsqueeze(-1)
    on_pos = g_lam * a_l.unsqueeze(2) + h * c_l.unsqueeze(2)
    on_neg = g_lam * a_u.unsqueeze(2) + h * c_u.unsqueeze(2)
    dg = torch.where(g > 0, on_pos, torch.where(g < 0, on_neg, torch.zeros_like(on_pos)))
    pos, neg = g.clamp(min=0), g.clamp(max=0)
    return dg, (g_lam * pos).sum(2), (h * pos).sum(2), (g_lam * neg).sum(2), (h * neg).sum(2)


def setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_in(namespace: str):
    def backward(ctx, g_lam, g_bias):
        lam, W, b, a_l, c_l, a_u, c_u = ctx.saved_tensors
        need = ctx.needs_input_grad
        P, B, S, n_out = lam.shape
        n_in = W.shape[-1]
        g_lam = lam.new_zeros(P, B, S, n_in) if g_lam is None else g_lam
        g_bias = lam.new_zeros(P, B, S) if g_bias is None else g_bias
        fused = fused_kernel("backsub_linear_relu_backward", namespace, lam.device)
        if torch.is_grad_enabled() or fused is None:
            dg, *d_relax = epilogue_torch(lam, W, g_lam, g_bias, a_l, c_l, a_u, c_u)
        else:
            dg, *d_relax = fused(lam, W, g_lam, g_bias, a_l, c_l, a_u, c_u)
        grads = [None] * 7
        if need[0]:
            d_lam = torch.matmul(dg.reshape(P, B * S, n_in), W.transpose(-1, -2)).reshape(P, B, S, n_out)
            grads[0] = d_lam + g_bias.unsqueeze(-1) * b[:, None, None, :] if b is not None else d_lam
        if need[1]:
            rows = lam.reshape(P, B * S, n_out)
            grads[1] = reduce_members(torch.matmul(rows.transpose(-1, -2), dg.reshape(P, B * S, n_in)), W)
        if need[2] and b is not None:
            grads[2] = reduce_members((g_bias.unsqueeze(-1) * lam).sum((1, 2)), b)
        for i, (d, like) in enumerate(zip(d_relax, (a_l, c_l, a_u, c_u)), start=3):
            if need[i]:
                grads[i] = reduce_members(d, like)
        return tuple(grads)

    return backward


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::backsub_linear_relu")(fake)
    torch.library.register_autograd(f"{namespace}::backsub_linear_relu", _backward_in(namespace),
                                    setup_context=setup_context)
    if namespace in native.NAMESPACES and native.has_op("backsub_linear_relu_backward", namespace):
        torch.library.register_fake(f"{namespace}::backsub_linear_relu_backward")(backward_fake)
