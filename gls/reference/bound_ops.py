"""Reference definitions of the bound-propagation ops (docs/design.md §3).

Shapes follow the population convention: a leading population axis P on weights and bounds, inputs
shared by all members. Every function here is differentiable by autograd; the kernels' autograd
formulas are tested against (and, where no fused backward exists, defined by) these.
"""
from __future__ import annotations

import torch

from gls import windows
from gls_kernels.common import relax_code


def relu_relax(l: torch.Tensor, u: torch.Tensor, method: str):
    """Lines a_l*z + c_l <= relu(z) <= a_u*z + c_u for l <= z <= u, elementwise.

    Stable neurons are exact. Unstable ones (l < 0 < u): `ibp`/`hbox` use the box 0 <= y <= u;
    `crown-ibp`/`deeppoly` use the triangle's upper line u(z - l)/(u - l) and the lower slope
    1 if u > -l else 0. The line's offset is the larger of -l s and u (1 - s) (equal in exact
    arithmetic, s the rounded slope): the line then stays above relu at both ends up to one rounding,
    and becomes the box line y <= u when u - l overflows to inf (s = 0; -l s alone would give y <= 0).
    """
    code = relax_code(method)
    if l.shape != u.shape:
        raise ValueError(f"relu_relax: l and u must have the same shape, got {tuple(l.shape)} and {tuple(u.shape)}")
    active = l >= 0
    unstable = (~active) & (u > 0)
    act = active.to(l.dtype)
    zero = torch.zeros_like(l)
    if code <= 1:
        return act, zero, act, torch.where(unstable, u, zero)
    denom = torch.where(unstable, u - l, torch.ones_like(l))  # safe: no 0/0 in the unused branch's gradient
    slope = u / denom
    a_u = torch.where(unstable, slope, act)
    c1, c2 = -l * slope, u * (1 - slope)
    c_u = torch.where(unstable, torch.where(c1 >= c2, c1, c2), zero)
    a_l = torch.where(unstable, (u > -l).to(l.dtype), act)
    return a_l, zero, a_u, c_u


def backsub_linear_relu(lam, W, b, a_l, c_l, a_u, c_u):
    """One back-substitution step for a lower bound: through z_out = W x + b, then x = relu(z_in).

    lam (P,B,S,N_out) are the coefficients of the bound on z_out; W (P|1,N_out,N_in); b (P|1,N_out) or
    None; relaxation lines of the ReLU feeding the layer (P,B,N_in). Returns the coefficients on z_in
    (P,B,S,N_in) and the constant collected on the way (P,B,S): lam.b + (lam W)^+ c_l + (lam W)^- c_u.
    """
    P, B, S, n_out = lam.shape
    g = torch.matmul(lam.reshape(P, B * S, n_out), W).reshape(P, B, S, W.shape[-1])
    pos, neg = g.clamp(min=0), g.clamp(max=0)
    lam_next = pos * a_l.unsqueeze(2) + neg * a_u.unsqueeze(2)
    bias = (pos * c_l.unsqueeze(2) + neg * c_u.unsqueeze(2)).sum(-1)
    if b is not None:
        bias = bias + (lam * b[:, None, None, :]).sum(-1)
    return lam_next, bias


def backsub_conv_relu(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation, keep_window=False):
    """backsub_linear_relu for a convolution, on windows: through z_out = conv(x, W) + b, then x = relu(z_in).

    lam (P,B,R,C_out,h,w): each row's coefficients on a window of z_out, zero outside z_out's map (see
    gls.windows); W (P,C_out,C_in,kh,kw); b (P,C_out) or None; lines of the ReLU feeding the conv as
    maps (P,B,C_in,H,W); origin (P,B,R,2) int64: each row's window on z_in starts at its z_out origin
    times the stride minus the padding. Returns the coefficients on z_in's windows, (P,B,R,C_in,h',w')
    with h' = (h-1)*stride + dilation*(kh-1) + 1 (zero outside the map: the lines are taken as 0
    there), the constant (P,B,R): lam.b + g^+ c_l + g^- c_u, g the transposed convolution of lam, and
    with keep_window g itself, zero outside the map (what the kernels' closed-form backward reads
    instead of recomputing it), else an empty tensor.
    """
    g = windows.conv_transpose(lam, W, stride, dilation)
    size = g.shape[-2:]
    pos = g >= 0  # select the line per coefficient, as relax_step does
    a = torch.where(pos, windows.gather(a_l, origin, size), windows.gather(a_u, origin, size))
    c = torch.where(pos, windows.gather(c_l, origin, size), windows.gather(c_u, origin, size))
    bias = (g * c).sum((-3, -2, -1))
    if b is not None:
        bias = bias + (lam.sum((-2, -1)) * b[:, None, None, :]).sum(-1)
    window = (g * windows.inside(origin, size, *a_l.shape[-2:], g.dtype)).detach() if keep_window else g.new_empty(0)
    return g * a, bias, window


def concretize(lam, bias, x_lo, x_hi):
    """Lower bound of lam.x + bias over the box x_lo <= x <= x_hi: lam^+ x_lo + lam^- x_hi + bias.

    lam (P,B,S,N), bias (P,B,S), x_lo and x_hi (B,N) shared by the population -> (P,B,S).
    """
    lo, hi = x_lo[None, :, None, :], x_hi[None, :, None, :]
    return (lam.clamp(min=0) * lo).sum(-1) + (lam.clamp(max=0) * hi).sum(-1) + bias


def ibp_affine(mid, rad, W, b):
    """Interval step through z = W x + b in centre/radius form: (mid W^T + b, rad |W|^T).

    mid and rad (P|1,B,N_in), W (P|1,N_out,N_in), b (P|1,N_out) or None -> two (P,B,N_out) tensors.
    """
    mid_out = torch.matmul(mid, W.transpose(-1, -2))
    if b is not None:
        mid_out = mid_out + b.unsqueeze(-2)
    return mid_out, torch.matmul(rad, W.abs().transpose(-1, -2))
