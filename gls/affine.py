"""Population-batched affine maps of the network IR: forward, interval step and back-substitution.

Activations are kept flat, (P|1, B, N) (a leading 1 = shared by every member, as the input is), and
back-substitution coefficients are (P, B, S, N_out) -> (P, B, S, N_in). The interval step of Dense
(Linear) and Conv goes the way gls.population_paths picks per layer and call (stacked filters, members
folded into the batch, a grouped convolution, im2col + bmm, a loop, or gls.ops.ibp_affine); their
forward map is one call for every member. Diag (elementwise scaling: Normalize, a BatchNorm that follows
no Linear/Conv) and back-substitution through Conv (a grouped transposed convolution) are plain PyTorch.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from gls import ops
from gls import population_paths as paths


def _one_call(gx: int, gw: int) -> str:
    """The population path that maps every member in one call (shared inputs: stacked filters)."""
    return "stacked" if gx < gw else "folded" if gw < gx else "grouped"


def _shared(W, b):
    """(W, b) with the population axis cut to 1 where every member has the same weights (expanded: stride 0)."""
    if W.shape[0] > 1 and W.stride(0) == 0 and (b is None or b.stride(0) == 0):
        return W[:1], None if b is None else b[:1]
    return W, b


class Dense:
    """z = x W^T + b; W (P, N_out, N_in), b (P, N_out) or None."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor | None):
        self.W, self.b = W, b
        self.n_out, self.n_in = W.shape[-2], W.shape[-1]

    def apply(self, x, weight, bias):
        """x (P|1, B, N_in) through this layer's map with `weight`, `bias` in place of W, b -> (P, B, N_out)."""
        out = torch.matmul(x, weight.transpose(-1, -2))
        return out if bias is None else out + bias.unsqueeze(-2)

    def forward(self, x):
        return self.apply(x, self.W, self.b)

    def ibp(self, mid, rad, backend=None):
        """Interval step; an explicit backend (keyword or GLS_BACKEND) runs gls.ops.ibp_affine on it."""
        if ops.backend_requested(backend):
            return ops.ibp_affine(mid, rad, self.W, self.b, backend=backend)
        W, b = _shared(self.W, self.b)
        choice = paths.choose(f"linear {self.n_in}->{self.n_out}", mid, rad, W, None)
        return paths.interval(choice.path, choice.pairing, mid, rad, W, b, None)

    def back(self, lam):
        """Coefficients on the input and the constant lam . b collected on the way."""
        B, S = lam.shape[1], lam.shape[2]
        g = torch.matmul(lam.flatten(1, 2), self.W).unflatten(1, (B, S))
        if self.b is None:
            return g, lam.new_zeros(g.shape[:-1])
        return g, torch.matmul(lam.flatten(1, 2), self.b.unsqueeze(-1)).squeeze(-1).unflatten(1, (B, S))


class Conv:
    """2-D convolution per member: W (P, C_out, C_in, kh, kw), b (P, C_out) or None.

    in_shape (C_in, H, W) and out_shape (C_out, H_out, W_out) are the per-sample shapes; the
    activations stay flat. Transposition is conv_transpose2d with the output padding that restores
    the input size whatever the stride and padding.
    """

    def __init__(self, W, b, stride, padding, dilation, in_shape, out_shape):
        self.W, self.b = W, b
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)
        self.n_in, self.n_out = math.prod(in_shape), math.prod(out_shape)
        k = W.shape[-2:]
        self.output_padding = tuple(
            self.in_shape[1 + i] - ((self.out_shape[1 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1)
            for i in range(2))

    @property
    def geometry(self) -> paths.Geometry:
        return paths.Geometry(self.stride, self.padding, self.dilation, self.in_shape, self.out_shape)

    def apply(self, x, weight, bias):
        """x (P|1, B, N_in) through this convolution with `weight`, `bias` in place of W, b -> (P, B, N_out),
        one convolution for every member (stacked filters when the input is shared, groups = P otherwise)."""
        return paths.run(_one_call(x.shape[0], weight.shape[0]), x, weight, bias, self.geometry)

    def forward(self, x):
        return self.apply(x, self.W, self.b)

    def ibp(self, mid, rad, backend=None):
        """Interval step along the path gls.population_paths picks (no gls op: backend unused)."""
        c_out, c_in, kh, kw = self.W.shape[1:]
        layer = f"conv {c_in}->{c_out} {kh}x{kw}/{self.stride[0]} on {self.in_shape[1]}x{self.in_shape[2]}"
        W, b = _shared(self.W, self.b)
        choice = paths.choose(layer, mid, rad, W, self.geometry)
        return paths.interval(choice.path, choice.pairing, mid, rad, W, b, self.geometry)

    def back(self, lam):
        P, B, S = lam.shape[:3]
        c_out, c_in = self.W.shape[1:3]
        y = lam.reshape(P, B * S, *self.out_shape).transpose(0, 1).reshape(B * S, P * c_out, *self.out_shape[1:])
        w = self.W.reshape(P * c_out, c_in, *self.W.shape[-2:])
        g = F.conv_transpose2d(y, w, None, self.stride, self.padding, self.output_padding, P, self.dilation)
        g = g.reshape(B * S, P, self.n_in).transpose(0, 1).reshape(P, B, S, self.n_in)
        if self.b is None:
            return g, lam.new_zeros((P, B, S))
        per_channel = lam.reshape(P, B, S, c_out, -1).sum(-1)
        return g, (per_channel * self.b[:, None, None, :]).sum(-1)


class Diag:
    """z = x * s + t elementwise; s, t (P|1, N) (per-channel values already spread over the pixels).

    err: None, or elementwise bounds (|ds|, |dt|) on how far the computed s and t are from the real
    ones (they come out of divisions and square roots); gls.sound adds them to its allowance.
    """

    def __init__(self, s: torch.Tensor, t: torch.Tensor, err: tuple | None = None):
        self.s, self.t, self.err = s, t, err
        self.n_in = self.n_out = s.shape[-1]

    def forward(self, x):
        return x * self.s.unsqueeze(1) + self.t.unsqueeze(1)

    def ibp(self, mid, rad, backend=None):
        return mid * self.s.unsqueeze(1) + self.t.unsqueeze(1), rad * self.s.abs().unsqueeze(1)

    def back(self, lam):
        return lam * self.s[:, None, None, :], (lam * self.t[:, None, None, :]).sum(-1)


def relax_step(lam, a_l, c_l, a_u, c_u):
    """Back-substitution through a ReLU with lines a_l z + c_l <= y <= a_u z + c_u (lower bound of lam.y).

    lam (P, B, S, N), lines (P, B, N) -> coefficients on z and the constant lam^+ c_l + lam^- c_u.
    """
    pos = lam >= 0  # select the line per coefficient: same numbers as lam^+ a_l + lam^- a_u, fewer passes
    new = lam * torch.where(pos, a_l.unsqueeze(2), a_u.unsqueeze(2))
    return new, (lam * torch.where(pos, c_l.unsqueeze(2), c_u.unsqueeze(2))).sum(-1)
