"""backsub_conv_relu in Triton: one back-substitution step, for rows kept as windows, through
z_out = conv(x, W) + b and x = relu(z_in).

The transposed convolution of a row's window is an implicit GEMM in gather form: for each filter tap
(ky, kx), output pixel (y, x) of the window on z_in reads lam[:, qy, qx] with y = qy*stride + ky*dilation
(likewise x), so g[pixels, C_in] += lam_tap[pixels, C_out] @ W[:, :, ky, kx] (one tl.dot per tap and
block of C_out; pixels whose tap misses the (h, w) window load zeros). Each program owns one row and a
(BLOCK_M pixels) x (BLOCK_N input channels) tile of g, kept in registers; the epilogue reads the ReLU
lines straight from the maps at the row's origin (zero outside the map), selects (a_l, c_l) where
g >= 0 and (a_u, c_u) elsewhere, and writes one bias partial per (row, tile), summed afterwards in a
fixed order (deterministic). The lam . b term is added by the row's first tile.
Fake kernel and backward (shared with gls::backsub_conv_relu): gls/meta/backsub_conv_relu.py.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from gls_kernels import common


@triton.jit
def _backsub_conv_kernel(
    lam_ptr, w_ptr, b_ptr, al_ptr, cl_ptr, au_ptr, cu_ptr, origin_ptr, out_ptr, part_ptr, win_ptr,
    B, R, C_OUT, H_LAM, W_LAM, C_IN, KH, KW, H, W, H2, W2, S0, S1, D0, D1,
    N_TILES, stride_wp, stride_bp, stride_line_p,
    HAS_BIAS: tl.constexpr, KEEP_WINDOW: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    n_m = tl.num_programs(1)
    p = row // (B * R)
    bi = row // R % B
    hw = H_LAM * W_LAM
    win2 = H2 * W2
    taps = KH * KW
    pix = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # pixels of the window on z_in, y * W2 + x
    ci = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    pix_ok = pix < win2
    ci_ok = ci < C_IN
    y = pix // W2
    x = pix % W2
    lam_row = lam_ptr + row * C_OUT * hw
    w_base = w_ptr + p * stride_wp

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ky in range(0, KH):
        yy = y - ky * D0
        yy_c = tl.where(yy >= 0, yy, 0)  # keep % and // on non-negative values
        qy = yy_c // S0
        y_ok = (yy >= 0) & (yy_c % S0 == 0) & (qy < H_LAM)
        for kx in range(0, KW):
            xx = x - kx * D1
            xx_c = tl.where(xx >= 0, xx, 0)
            qx = xx_c // S1
            hit = pix_ok & y_ok & (xx >= 0) & (xx_c % S1 == 0) & (qx < W_LAM)
            q = qy * W_LAM + qx
            for k0 in range(0, C_OUT, BLOCK_K):
                co = k0 + rk
                co_ok = co < C_OUT
                lam_t = tl.load(lam_row + co.to(tl.int64)[None, :] * hw + q[:, None],
                                mask=hit[:, None] & co_ok[None, :], other=0.0)
                w_t = tl.load(w_base + co.to(tl.int64)[:, None] * (C_IN * taps) + ci[None, :] * taps + ky * KW + kx,
                              mask=co_ok[:, None] & ci_ok[None, :], other=0.0)
                acc = tl.dot(lam_t, w_t, acc=acc, input_precision=PRECISION)

    # Epilogue: the lines of this row's sample at the row's origin; zero outside the map.
    oy = tl.load(origin_ptr + 2 * row)
    ox = tl.load(origin_ptr + 2 * row + 1)
    gy = oy + y
    gx = ox + x
    inside = pix_ok & (gy >= 0) & (gy < H) & (gx >= 0) & (gx < W)
    mask = inside[:, None] & ci_ok[None, :]
    line = p * stride_line_p + bi * (C_IN * H * W) + ci.to(tl.int64)[None, :] * (H * W) + (gy * W + gx)[:, None]
    a_l = tl.load(al_ptr + line, mask=mask, other=0.0)
    c_l = tl.load(cl_ptr + line, mask=mask, other=0.0)
    a_u = tl.load(au_ptr + line, mask=mask, other=0.0)
    c_u = tl.load(cu_ptr + line, mask=mask, other=0.0)
    pos = acc >= 0.0
    new = tl.where(mask, acc * tl.where(pos, a_l, a_u), 0.0)
    at = row * C_IN * win2 + ci.to(tl.int64)[None, :] * win2 + pix[:, None]
    tl.store(out_ptr + at, new, mask=pix_ok[:, None] & ci_ok[None, :])
    if KEEP_WINDOW:  # g itself, zero outside the map, for the closed-form backward
        tl.store(win_ptr + at, tl.where(mask, acc, 0.0), mask=pix_ok[:, None] & ci_ok[None, :])
    partial = tl.sum(tl.sum(tl.where(mask, acc * tl.where(pos, c_l, c_u), 0.0), axis=1), axis=0)
    if HAS_BIAS:
        if (pid_m == 0) & (pid_n == 0):  # lam . b, once per row
            lam_b = tl.zeros((BLOCK_M,), dtype=tl.float32)
            rm = tl.arange(0, BLOCK_M)
            for k0 in range(0, C_OUT * hw, BLOCK_M):
                k = k0 + rm
                k_ok = k < C_OUT * hw
                lam_v = tl.load(lam_row + k, mask=k_ok, other=0.0)
                b_v = tl.load(b_ptr + p * stride_bp + k // hw, mask=k_ok, other=0.0)
                lam_b += lam_v * b_v
            partial += tl.sum(lam_b, axis=0)
    tl.store(part_ptr + row * N_TILES + pid_n * n_m + pid_m, partial)


def _pair(name, v):
    if len(v) != 2 or any(int(t) <= 0 for t in v):
        raise ValueError(f"gls_triton::backsub_conv_relu: {name} must be 2 positive integers, got {list(v)}")
    return int(v[0]), int(v[1])


def _check(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation):
    """Validate shapes; returns (P, B, R, C_in, h', w') of the output windows."""
    op = "backsub_conv_relu"
    lines = {"a_l": a_l, "c_l": c_l, "a_u": a_u, "c_u": c_u}
    common.check_inputs(
        op, {"lam": lam, "W": W, "b": b, **lines},
        {"lam": 6, "W": 5, "b": 2, "a_l": 5, "c_l": 5, "a_u": 5, "c_u": 5},
    )
    (s0, s1), (d0, d1) = _pair("stride", stride), _pair("dilation", dilation)
    P, B, R, c_out, h, w = lam.shape
    if W.shape[0] not in (1, P) or W.shape[1] != c_out:
        raise ValueError(
            f"gls_triton::{op}: W must have shape (1 or P={P}, C_out={c_out}, C_in, kh, kw) for lam of shape "
            f"{tuple(lam.shape)}, got {tuple(W.shape)}"
        )
    c_in, kh, kw = W.shape[2:]
    if b is not None and (b.shape[0] not in (1, P) or b.shape[1] != c_out):
        raise ValueError(f"gls_triton::{op}: b must have shape (1 or P={P}, C_out={c_out}), got {tuple(b.shape)}")
    if a_l.shape[0] not in (1, P) or tuple(a_l.shape[1:3]) != (B, c_in):
        raise ValueError(f"gls_triton::{op}: a_l must have shape (1 or P={P}, B={B}, C_in={c_in}, H, W), "
                         f"got {tuple(a_l.shape)}")
    for name, t in lines.items():
        if t.shape != a_l.shape:
            raise ValueError(f"gls_triton::{op}: {name} must have the shape of a_l {tuple(a_l.shape)}, got {tuple(t.shape)}")
    if origin.dtype != torch.int64 or tuple(origin.shape) != (P, B, R, 2) or origin.device != lam.device:
        raise ValueError(f"gls_triton::{op}: origin must be int64 of shape (P={P}, B={B}, R={R}, 2) on {lam.device}, "
                         f"got {origin.dtype} {tuple(origin.shape)} on {origin.device}")
    return P, B, R, c_in, (h - 1) * s0 + d0 * (kh - 1) + 1, (w - 1) * s1 + d1 * (kw - 1) + 1


def _block(n: int, cap: int) -> int:
    """A tl.dot tile side for n entries: a power of two from 16 up to cap."""
    return max(16, min(cap, triton.next_power_of_2(max(n, 1))))


@torch.library.custom_op("gls_triton::backsub_conv_relu", mutates_args=())
def backsub_conv_relu(
    lam: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor],
    a_l: torch.Tensor, c_l: torch.Tensor, a_u: torch.Tensor, c_u: torch.Tensor,
    origin: torch.Tensor, stride: list[int], dilation: list[int], keep_window: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lam_next (P,B,R,C_in,h',w'), bias (P,B,R), window) from windows lam (P,B,R,C_out,h,w), W
    (P|1,C_out,C_in,kh,kw), b (P|1,C_out) or None, lines (P|1,B,C_in,H,W) and origin (P,B,R,2) int64 (see
    gls.windows); window: with keep_window each row's transposed convolution (zero outside the map), else empty."""
    P, B, R, c_in, h2, w2 = _check(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation)
    lam, W, origin = lam.contiguous(), W.contiguous(), origin.contiguous()
    b = None if b is None else b.contiguous()
    a_l, c_l, a_u, c_u = (t.contiguous() for t in (a_l, c_l, a_u, c_u))
    c_out, h, w = lam.shape[3:]
    kh, kw = W.shape[3:]
    H, Wm = a_l.shape[3:]
    out = lam.new_empty((P, B, R, c_in, h2, w2))
    window = torch.empty_like(out) if keep_window else lam.new_empty((0,))
    tiles = common.MATMUL_TILES
    blocks = dict(BLOCK_M=tiles["BLOCK_M"], BLOCK_N=_block(c_in, tiles["BLOCK_N"]), BLOCK_K=_block(c_out, tiles["BLOCK_K"]))
    n_m = triton.cdiv(h2 * w2, blocks["BLOCK_M"])
    n_n = max(1, triton.cdiv(c_in, blocks["BLOCK_N"]))  # >= 1 so lam.b is still collected when C_in = 0
    partial = lam.new_empty((P, B, R, n_m * n_n))
    rows = P * B * R
    if rows == 0:
        return out, partial.sum(-1), window
    _backsub_conv_kernel[(rows, n_m, n_n)](
        lam, W, W if b is None else b, a_l, c_l, a_u, c_u, origin, out, partial, window if keep_window else out,
        B, R, c_out, h, w, c_in, kh, kw, H, Wm, h2, w2, *_pair("stride", stride), *_pair("dilation", dilation),
        n_m * n_n, common.population_stride(W), 0 if b is None else common.population_stride(b),
        common.population_stride(a_l),
        HAS_BIAS=b is not None, KEEP_WINDOW=keep_window, PRECISION=common.dot_precision(), **blocks, **common.LAUNCH,
    )
    return out, partial.sum(-1), window
