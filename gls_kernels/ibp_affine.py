"""ibp_affine in Triton: interval step through z = W x + b in centre/radius form, one pass over W.

Each program owns a (BLOCK_M batch rows) x (BLOCK_N outputs) tile for one population member and
loops over N_in: every W tile is loaded once and feeds both tl.dot(mid, W^T) and tl.dot(rad, |W|^T).
Population axes of size 1 (mid/rad, W, b) are shared through a zero stride, never materialised.
Fake kernel and backward: gls/meta/ibp_affine.py.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from gls_kernels import common


@triton.jit
def _ibp_affine_kernel(
    mid_ptr, rad_ptr, w_ptr, b_ptr, mid_out_ptr, rad_out_ptr,
    B, N_IN, N_OUT, stride_xp, stride_wp, stride_bp,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    p = tl.program_id(2).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < B
    n_ok = rn < N_OUT
    x_rows = p * stride_xp + rm.to(tl.int64)[:, None] * N_IN
    w_cols = w_ptr + p * stride_wp + rn.to(tl.int64)[None, :] * N_IN  # W^T tile: [k, n] = W[n, k]
    acc_mid = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_rad = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, N_IN, BLOCK_K):
        k = k0 + rk
        k_ok = k < N_IN
        x_mask = m_ok[:, None] & k_ok[None, :]
        mid = tl.load(mid_ptr + x_rows + k[None, :], mask=x_mask, other=0.0)
        rad = tl.load(rad_ptr + x_rows + k[None, :], mask=x_mask, other=0.0)
        w = tl.load(w_cols + k[:, None], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc_mid = tl.dot(mid, w, acc=acc_mid, input_precision=PRECISION)
        acc_rad = tl.dot(rad, tl.abs(w), acc=acc_rad, input_precision=PRECISION)
    if HAS_BIAS:
        acc_mid += tl.load(b_ptr + p * stride_bp + rn, mask=n_ok, other=0.0)[None, :]
    out = p * B * N_OUT + rm.to(tl.int64)[:, None] * N_OUT + rn[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    tl.store(mid_out_ptr + out, acc_mid, mask=mask)
    tl.store(rad_out_ptr + out, acc_rad, mask=mask)


def _check(mid, rad, W, b):
    """Validate shapes; returns (P, B, N_out) of both outputs, P broadcast over mid/rad and W."""
    op = "ibp_affine"
    common.check_inputs(op, {"mid": mid, "rad": rad, "W": W, "b": b}, {"mid": 3, "rad": 3, "W": 3, "b": 2})
    if mid.shape != rad.shape:
        raise ValueError(f"gls_triton::{op}: mid and rad must have the same shape, got {tuple(mid.shape)} and {tuple(rad.shape)}")
    Px, B, n_in = mid.shape
    Pw, n_out, w_in = W.shape
    if w_in != n_in:
        raise ValueError(f"gls_triton::{op}: W has N_in={w_in} columns but mid/rad have N_in={n_in} features")
    if Px != Pw and 1 not in (Px, Pw):
        raise ValueError(f"gls_triton::{op}: population sizes of mid/rad ({Px}) and W ({Pw}) must match or be 1")
    P = Px if Pw == 1 else Pw  # the joint population size (0 included: an empty population stays empty)
    # b's population may not exceed that of mid/W: the radius output does not depend on b, so a
    # per-member b with everything else shared would give the two outputs different shapes.
    if b is not None and (b.shape[0] not in (1, P) or b.shape[1] != n_out):
        raise ValueError(f"gls_triton::{op}: b must have shape (1 or P={P}, N_out={n_out}), got {tuple(b.shape)}")
    return P, B, n_out


@torch.library.custom_op("gls_triton::ibp_affine", mutates_args=())
def ibp_affine(mid: torch.Tensor, rad: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mid W^T + b, rad |W|^T), each (P,B,N_out), from mid/rad (P|1,B,N_in), W (P|1,N_out,N_in), b (P|1,N_out) or None."""
    P, B, n_out = _check(mid, rad, W, b)
    mid, rad, W = mid.contiguous(), rad.contiguous(), W.contiguous()
    b = None if b is None else b.contiguous()
    mid_out, rad_out = mid.new_empty((P, B, n_out)), mid.new_empty((P, B, n_out))
    if P * B * n_out:
        tiles = common.MATMUL_TILES
        grid = (triton.cdiv(B, tiles["BLOCK_M"]), triton.cdiv(n_out, tiles["BLOCK_N"]), P)
        _ibp_affine_kernel[grid](
            mid, rad, W, W if b is None else b, mid_out, rad_out,
            B, mid.shape[2], n_out, common.population_stride(mid), common.population_stride(W),
            0 if b is None else common.population_stride(b),
            HAS_BIAS=b is not None, PRECISION=common.dot_precision(), **tiles, **common.LAUNCH,
        )
    return mid_out, rad_out
