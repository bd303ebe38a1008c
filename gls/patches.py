"""Back-substitution of rows that start at convolution neurons, carried as windows (gls.windows).

A row that starts at neuron (c, i, j) of a convolution's output has non-zero coefficients only in
that neuron's receptive field, so it is kept as a (C, h, w) window of coefficients at an origin on
the current map, as auto_LiRPA's "patches" mode does for whole layers, but per row: every member
and sample carries only its own unstable neurons. Going back through a convolution the window
grows to (h - 1) * stride + dilation * (kh - 1) + 1 and its origin moves to origin * stride -
padding; once it is no smaller than the map it is cut to the map (`crop`), and dense rows enter a
convolution as whole-map windows (`whole`); rows become dense (`dense`) only before an op that is
not a convolution or an elementwise map. The numbers equal those of dense rows: the coefficients
outside a window are exactly zero.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from gls import ops, windows
from gls.affine import Conv, Diag


class Rows(NamedTuple):
    """Rows as windows: coef (P, B, R, C, h, w) at origin (P, B, R, 2) on a map of shape (C, H, W).

    at: the origin every row shares (rows that started as whole maps), so cropping is a slice; else None.
    """

    coef: torch.Tensor
    origin: torch.Tensor
    shape: tuple[int, int, int]
    at: tuple[int, int] | None = None


def start(idx: torch.Tensor, value: torch.Tensor, shape) -> Rows:
    """Rows value[r] * e_idx[r] on a (C, H, W) map: 1x1 windows at the neurons idx (P, B, R)."""
    C, H, W = shape
    coef = torch.zeros(*idx.shape, C, dtype=value.dtype, device=idx.device)
    coef.scatter_(-1, (idx // (H * W)).unsqueeze(-1), value.unsqueeze(-1))
    origin = torch.stack([idx % (H * W) // W, idx % W], dim=-1)
    return Rows(coef[..., None, None], origin, tuple(shape))


def whole(lam: torch.Tensor, shape) -> Rows:
    """Dense rows (P, B, R, C*H*W) as windows covering the whole (C, H, W) map."""
    origin = torch.zeros(*lam.shape[:3], 2, dtype=torch.long, device=lam.device)
    return Rows(lam.reshape(*lam.shape[:3], *shape), origin, tuple(shape), (0, 0))


def windowed(op, shape) -> bool:
    """Whether rows on the output of `op` (a map of `shape`) can be carried as windows through it."""
    return isinstance(op, (Conv, Diag)) and len(shape) == 3


def _grown(rows: Rows, conv: Conv):
    """(origin, size, uniform origin or None) of the rows' windows on the conv's input."""
    origin = rows.origin * rows.origin.new_tensor(conv.stride) - rows.origin.new_tensor(conv.padding)
    at = None if rows.at is None else tuple(o * s - p for o, s, p in zip(rows.at, conv.stride, conv.padding))
    kh, kw = conv.W.shape[-2:]
    h, w = rows.coef.shape[-2:]
    return origin, ((h - 1) * conv.stride[0] + conv.dilation[0] * (kh - 1) + 1,
                    (w - 1) * conv.stride[1] + conv.dilation[1] * (kw - 1) + 1), at


def _conv_bias(rows: Rows, conv: Conv) -> torch.Tensor:
    if conv.b is None:
        return rows.coef.new_zeros(rows.coef.shape[:3])
    return (rows.coef.sum((-2, -1)) * conv.b[:, None, None, :]).sum(-1)


def back_conv(rows: Rows, conv: Conv) -> tuple[Rows, torch.Tensor]:
    """Through z = conv(x) + b: rows on z -> rows on x (zero outside x's map) and lam . b."""
    g = windows.conv_transpose(rows.coef, conv.W, conv.stride, conv.dilation)
    origin, size, at = _grown(rows, conv)
    g = g * windows.inside(origin, size, *conv.in_shape[1:], g.dtype)
    return Rows(g, origin, conv.in_shape, at), _conv_bias(rows, conv)


def _maps(flat: torch.Tensor, shape) -> torch.Tensor:
    """(P|1, B|1, N) flat activations -> (P|1, B|1, C, H, W) maps."""
    return flat.reshape(*flat.shape[:2], *shape)


def back_diag(rows: Rows, diag: Diag) -> tuple[Rows, torch.Tensor]:
    """Through z = x * s + t elementwise (s, t zero outside the map, so the rows stay zero there)."""
    size = rows.coef.shape[-2:]
    s = windows.gather(_maps(diag.s.unsqueeze(1), rows.shape), rows.origin, size)
    t = windows.gather(_maps(diag.t.unsqueeze(1), rows.shape), rows.origin, size)
    return rows._replace(coef=rows.coef * s), (rows.coef * t).sum((-3, -2, -1))


def relax_step(rows: Rows, a_l, c_l, a_u, c_u) -> tuple[Rows, torch.Tensor]:
    """gls.affine.relax_step on windows; lines (P, B, N) of the ReLU whose output the rows are on."""
    size = rows.coef.shape[-2:]
    lam = rows.coef
    pos = lam >= 0
    a = torch.where(pos, windows.gather(_maps(a_l, rows.shape), rows.origin, size),
                    windows.gather(_maps(a_u, rows.shape), rows.origin, size))
    c = torch.where(pos, windows.gather(_maps(c_l, rows.shape), rows.origin, size),
                    windows.gather(_maps(c_u, rows.shape), rows.origin, size))
    return rows._replace(coef=lam * a), (lam * c).sum((-3, -2, -1))


def conv_relu(rows: Rows, conv: Conv, lines, backend=None) -> tuple[Rows, torch.Tensor]:
    """Through z = conv(x) + b and x = relu(z_in) in one fused op (gls.ops.backsub_conv_relu)."""
    origin, size, at = _grown(rows, conv)
    maps = [t if t.dim() == 5 else _maps(t, conv.in_shape) for t in lines]
    W = conv.W.expand(rows.coef.shape[0], *conv.W.shape[1:])
    b = None if conv.b is None else conv.b.expand(rows.coef.shape[0], -1)
    coef, bias = ops.backsub_conv_relu(rows.coef, W, b, *maps, origin, list(conv.stride), list(conv.dilation),
                                       backend=backend)
    return Rows(coef, origin, conv.in_shape, at), bias


def first_conv_bound(rows: Rows, seg, x_lo, x_hi, backend=None) -> torch.Tensor | None:
    """Lower bound of the rows over the input box when segs[0] is elementwise maps then one convolution.

    The elementwise maps (Normalize, BatchNorm) are exact on boxes, so the box is carried through them
    and the convolution's rows are concretised on it by the fused op itself: with lines a = 0, c_l =
    lower and c_u = upper corner, its constant is lam . b + sum g^+ lo + g^- hi, the lower bound of
    lam . conv(x) over the box. None for any other first segment.
    """
    if not seg or not isinstance(seg[-1], Conv) or not all(isinstance(op, Diag) for op in seg[:-1]):
        return None
    conv = seg[-1]
    mid, rad = ((x_hi + x_lo) / 2).unsqueeze(0), ((x_hi - x_lo) / 2).unsqueeze(0)
    for op in seg[:-1]:
        mid, rad = op.ibp(mid, rad)
    lo, hi = _maps(mid - rad, conv.in_shape), _maps(mid + rad, conv.in_shape)
    zero = torch.zeros_like(lo)
    _, bound = conv_relu(rows, conv, (zero, lo, zero, hi), backend)
    return bound


def _onto(o: int, size: int, n: int) -> tuple[slice, int, int]:
    """A window's extent [o, o + size) placed on a map's [0, n): (the part of the window inside the
    map, zeros before it, zeros after it); the part is empty when the window lies wholly outside."""
    lo = min(max(0, -o), size)
    hi = max(lo, min(size, n - o))
    before = min(max(0, o), n)
    return slice(lo, hi), before, n - before - (hi - lo)


def crop(rows: Rows) -> Rows:
    """Windows no smaller than their map (in coefficients), cut to the map itself (exact: they are zero
    outside it). A window may be larger than the map in one dimension and lie wholly outside it, in the
    padding, in the other; its cut is then zero."""
    h, w = rows.coef.shape[-2:]
    H, W = rows.shape[1:]
    if h * w < H * W:
        return rows
    if rows.at is None:
        return whole(dense(rows), rows.shape)
    (ys, top, bottom), (xs, left, right) = _onto(rows.at[0], h, H), _onto(rows.at[1], w, W)  # one origin: a slice
    coef = torch.nn.functional.pad(rows.coef[..., ys, xs], (left, right, top, bottom))
    return rows._replace(coef=coef, origin=torch.zeros_like(rows.origin), at=(0, 0))


def dense(rows: Rows) -> torch.Tensor:
    """The rows as dense coefficients (P, B, R, C*H*W)."""
    C, H, W = rows.shape
    return windows.scatter(rows.coef, rows.origin, H, W).flatten(-3)


def concretize(rows: Rows, bias: torch.Tensor, x_lo: torch.Tensor, x_hi: torch.Tensor) -> torch.Tensor:
    """Lower bound of the rows over the input box (B, N) -> (P, B, R), as gls.ops.concretize."""
    size = rows.coef.shape[-2:]
    lo = windows.gather(_maps(x_lo.unsqueeze(0), rows.shape), rows.origin, size)
    hi = windows.gather(_maps(x_hi.unsqueeze(0), rows.shape), rows.origin, size)
    lam = rows.coef
    return (lam.clamp(min=0) * lo + lam.clamp(max=0) * hi).sum((-3, -2, -1)) + bias


class RowCost(NamedTuple):
    """What one back-substituted row costs (gls.patches.row_cost)."""

    most: int  # coefficients of its largest tensor
    macs: int  # multiply-adds of its Linear/Conv steps
    total: int  # coefficients of all its tensors together (what autograd keeps of it, per number kept)


def row_cost(segs, k: int, shape) -> RowCost:
    """What one row starting at segs[k]'s output (a map of `shape`) costs on its way to the input,
    following gls.bounds._backsub: windows grow through convolutions and are cropped to the map once no
    smaller than it; dense rows become whole-map windows at a convolution."""
    most, macs = math.prod(shape), 0
    size = (1, 1) if len(shape) == 3 else None  # None: dense rows
    total = n = shape[0] if size else most  # n: coefficients of the row's current tensor (a 1x1 window first)
    for seg in reversed(segs[:k + 1]):
        for op in reversed(seg):
            if isinstance(op, Conv):
                h, w = size or op.out_shape[1:]
                kh, kw = op.W.shape[-2:]
                macs += op.out_shape[0] * h * w * op.in_shape[0] * kh * kw
                h = (h - 1) * op.stride[0] + op.dilation[0] * (kh - 1) + 1
                w = (w - 1) * op.stride[1] + op.dilation[1] * (kw - 1) + 1
                n = op.in_shape[0] * h * w
                most, total = max(most, n), total + n
                H, W = op.in_shape[1:]
                size = (H, W) if h * w >= H * W else (h, w)
                if h * w >= H * W:  # cropped to the map: a second tensor
                    n = op.in_shape[0] * H * W
                    total += n
            elif isinstance(op, Diag):  # elementwise maps keep the size
                total += n
            else:
                n, size, macs = op.n_in, None, macs + op.n_in * op.n_out
                most, total = max(most, n), total + n
    return RowCost(most, macs, total)


def map_shape(segs, k: int, in_shape) -> tuple[int, ...]:
    """Per-sample shape of segs[k]'s output: (C, H, W) after a convolution, else (N,)."""
    shape = tuple(in_shape)
    for seg in segs[:k + 1]:
        for op in seg:
            if isinstance(op, Conv):
                shape = op.out_shape
            elif not isinstance(op, Diag):
                shape = (op.n_out,)
    return shape if len(shape) == 3 else (math.prod(shape),)
