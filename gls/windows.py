"""Windows of feature maps: the geometry of patch (receptive-field) back-substitution rows.

A row of a back-substitution that starts at one neuron of a convolution's output only ever has
non-zero coefficients inside that neuron's receptive field. Such a row is kept as a window: a
(C, h, w) block of coefficients whose top-left corner lies at `origin` (row, column) of a (C, H, W)
map. The origin may lie outside the map (padding); coefficients outside the map are zero.

Maps are (P|1, B|1, C, H, W) (a leading 1 is shared by every member or sample); origins are (P, B,
R, 2) int64, one per row r of member p and sample b. Plain PyTorch, differentiable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _padding(origin: torch.Tensor, size, H: int, W: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of an (H, W) map that puts every window inside it."""
    lo = origin.amin(dim=(0, 1, 2)).tolist() if origin.numel() else [0, 0]
    hi = origin.amax(dim=(0, 1, 2)).tolist() if origin.numel() else [0, 0]
    return (max(0, -lo[0]), max(0, hi[0] + size[0] - H), max(0, -lo[1]), max(0, hi[1] + size[1] - W))


def _index(origin: torch.Tensor, size, top: int, left: int, width: int) -> torch.Tensor:
    """Flat (P, B, R, h*w) positions of every window element in a padded map of row length `width`."""
    h, w = size
    ar_h = torch.arange(h, device=origin.device)
    ar_w = torch.arange(w, device=origin.device)
    oy = (origin[..., 0] + top)[..., None, None] + ar_h[:, None]
    ox = (origin[..., 1] + left)[..., None, None] + ar_w
    return (oy * width + ox).flatten(-2)


def _positions(origin: torch.Tensor, size, H: int, W: int):
    """Map rows ys (P, B, R, h) and columns xs (P, B, R, w) of every window, and (P, B, R, h, w) whether
    each element lies inside the (H, W) map."""
    ys = origin[..., 0, None] + torch.arange(size[0], device=origin.device)
    xs = origin[..., 1, None] + torch.arange(size[1], device=origin.device)
    return ys, xs, ((ys >= 0) & (ys < H))[..., :, None] & ((xs >= 0) & (xs < W))[..., None, :]


def _member_sample(P: int, B: int, Pm: int, Bm: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    pi = torch.arange(P, device=device) if Pm == P else torch.zeros(P, dtype=torch.long, device=device)
    bi = torch.arange(B, device=device) if Bm == B else torch.zeros(B, dtype=torch.long, device=device)
    return pi[:, None, None, None], bi[None, :, None, None]


def gather(maps: torch.Tensor, origin: torch.Tensor, size) -> torch.Tensor:
    """Windows (P, B, R, C, h, w) of maps (P|1, B|1, C, H, W) at origin (P, B, R, 2); zero outside.

    Indices are clamped into the map and the outside masked afterwards, so the shapes never depend on
    the origins' values (no host sync, traceable by torch.compile and the fake-tensor checks).
    """
    Pm, Bm, C, H, W = maps.shape
    P, B = origin.shape[:2]
    ys, xs, ok = _positions(origin, size, H, W)
    idx = (ys.clamp(0, H - 1)[..., :, None] * W + xs.clamp(0, W - 1)[..., None, :]).flatten(-2)
    flat = maps.flatten(-2).transpose(-1, -2)  # (Pm, Bm, H*W, C): one gather reads C contiguous values
    pi, bi = _member_sample(P, B, Pm, Bm, maps.device)
    vals = flat[pi, bi, idx].transpose(-1, -2).unflatten(-1, tuple(size))
    return torch.where(ok.unsqueeze(3), vals, vals.new_zeros(()))


def inside(origin: torch.Tensor, size, H: int, W: int, dtype) -> torch.Tensor:
    """(P, B, R, 1, h, w) 1 where a window element lies inside the (H, W) map, else 0."""
    return _positions(origin, size, H, W)[2].unsqueeze(3).to(dtype)


def scatter(windows: torch.Tensor, origin: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Dense maps (P, B, R, C, H, W) holding each window at its origin (the parts outside are dropped)."""
    P, B, R, C, h, w = windows.shape
    top, bottom, left, right = _padding(origin, (h, w), H, W)
    Hp, Wp = H + top + bottom, W + left + right
    idx = _index(origin, (h, w), top, left, Wp)  # (P, B, R, h*w), distinct within a row
    canvas = windows.new_zeros(P, B, R, C, Hp * Wp)
    canvas = canvas.scatter(-1, idx.unsqueeze(3).expand(P, B, R, C, h * w), windows.flatten(-2))
    return canvas.unflatten(-1, (Hp, Wp))[..., top:top + H, left:left + W]


def conv_transpose(lam: torch.Tensor, W: torch.Tensor, stride, dilation) -> torch.Tensor:
    """The transposed convolution of every window, without padding: (P, B, R, C_out, h, w) ->
    (P, B, R, C_in, (h-1)*stride + dilation*(kh-1) + 1, ...), W (P|1, C_out, C_in, kh, kw).

    One batched GEMM per member (window pixels x C_out times C_out x C_in*kh*kw) and a col2im
    (F.fold): for the many tiny windows of a pass this is much faster than conv_transpose2d.
    """
    P, B, R, c_out, h, w = lam.shape
    c_in, kh, kw = W.shape[2:]
    cols = torch.bmm(lam.reshape(P, B * R, c_out, h * w).transpose(-1, -2).reshape(P, B * R * h * w, c_out),
                     W.expand(P, -1, -1, -1, -1).reshape(P, c_out, c_in * kh * kw))
    out = ((h - 1) * stride[0] + dilation[0] * (kh - 1) + 1, (w - 1) * stride[1] + dilation[1] * (kw - 1) + 1)
    cols = cols.reshape(P * B * R, h * w, c_in * kh * kw).transpose(-1, -2)
    g = F.fold(cols, out, (kh, kw), dilation=tuple(dilation), stride=tuple(stride))
    return g.reshape(P, B, R, c_in, *out)
