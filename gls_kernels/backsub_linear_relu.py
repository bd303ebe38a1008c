"""backsub_linear_relu in Triton: one back-substitution step through z_out = W x + b and x = relu(z_in).

Each program owns a (BLOCK_M rows of lam) x (BLOCK_N inputs) tile of G = lam W for one population
member, accumulates it with tl.dot over N_out, and applies the ReLU relaxation in the epilogue:
lam_next = G^+ a_l + G^- a_u, bias partial = sum over its columns of G^+ c_l + G^- c_u. G never
goes to memory. The bias row sums are written as one partial per (row, column tile) and summed by a
second, tiny reduction (torch.sum over the tile axis): deterministic, unlike atomic adds, and the
partial buffer is only 1/BLOCK_N of lam_next's size. The lam.b term is accumulated along the same
K loop (lam's tile is already loaded) and added to the column-tile-0 partial.
Fake kernel and backward (shared with gls::backsub_linear_relu): gls/meta/backsub_linear_relu.py.
"""
from typing import Optional

import torch
import triton
import triton.language as tl

from gls_kernels import common


@triton.jit
def _backsub_kernel(
    lam_ptr, w_ptr, b_ptr, al_ptr, cl_ptr, au_ptr, cu_ptr, out_ptr, part_ptr,
    M, S, N_OUT, N_IN, N_TILES, stride_wp, stride_bp, stride_line_p,
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    p = tl.program_id(2).to(tl.int64)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N_IN
    rows = rm.to(tl.int64)
    lam_rows = lam_ptr + p * M * N_OUT + rows[:, None] * N_OUT
    w_base = w_ptr + p * stride_wp
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    lam_b = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for k0 in range(0, N_OUT, BLOCK_K):
        k = k0 + rk
        k_ok = k < N_OUT
        lam_t = tl.load(lam_rows + k[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w_t = tl.load(w_base + k.to(tl.int64)[:, None] * N_IN + rn[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc = tl.dot(lam_t, w_t, acc=acc, input_precision=PRECISION)
        if HAS_BIAS:
            b_t = tl.load(b_ptr + p * stride_bp + k, mask=k_ok, other=0.0)
            lam_b += tl.sum(lam_t * b_t[None, :], axis=1)

    # Epilogue: relaxation lines of row m's batch element m // S.
    mask = m_ok[:, None] & n_ok[None, :]
    line = p * stride_line_p + (rows // S)[:, None] * N_IN + rn[None, :]
    a_l = tl.load(al_ptr + line, mask=mask, other=0.0)
    c_l = tl.load(cl_ptr + line, mask=mask, other=0.0)
    a_u = tl.load(au_ptr + line, mask=mask, other=0.0)
    c_u = tl.load(cu_ptr + line, mask=mask, other=0.0)
    pos = tl.maximum(acc, 0.0)
    neg = tl.minimum(acc, 0.0)
    tl.store(out_ptr + p * M * N_IN + rows[:, None] * N_IN + rn[None, :], pos * a_l + neg * a_u, mask=mask)
    partial = tl.sum(pos * c_l + neg * c_u, axis=1)
    if HAS_BIAS:
        partial += tl.where(pid_n == 0, lam_b, 0.0)
    tl.store(part_ptr + (p * M + rows) * N_TILES + pid_n, partial, mask=m_ok)


def _check(lam, W, b, a_l, c_l, a_u, c_u):
    """Validate shapes; returns (P, B, S, N_out, N_in)."""
    op = "backsub_linear_relu"
    lines = {"a_l": a_l, "c_l": c_l, "a_u": a_u, "c_u": c_u}
    common.check_inputs(
        op, {"lam": lam, "W": W, "b": b, **lines},
        {"lam": 4, "W": 3, "b": 2, "a_l": 3, "c_l": 3, "a_u": 3, "c_u": 3},
    )
    P, B, S, n_out = lam.shape
    if W.shape[0] not in (1, P) or W.shape[1] != n_out:
        raise ValueError(
            f"gls_triton::{op}: W must have shape (1 or P={P}, N_out={n_out}, N_in) for lam of shape "
            f"{tuple(lam.shape)}, got {tuple(W.shape)}"
        )
    n_in = W.shape[2]
    if b is not None and (b.shape[0] not in (1, P) or b.shape[1] != n_out):
        raise ValueError(f"gls_triton::{op}: b must have shape (1 or P={P}, N_out={n_out}), got {tuple(b.shape)}")
    for name, t in lines.items():  # one population size for the four lines: P, or 1 when shared
        if tuple(t.shape) != (a_l.shape[0], B, n_in) or a_l.shape[0] not in (1, P):
            raise ValueError(f"gls_triton::{op}: {name} must have shape (1 or P, B, N_in) = (1 or {P}, {B}, {n_in}) like a_l, "
                             f"got {tuple(t.shape)}")
    return P, B, S, n_out, n_in


@torch.library.custom_op("gls_triton::backsub_linear_relu", mutates_args=())
def backsub_linear_relu(
    lam: torch.Tensor, W: torch.Tensor, b: Optional[torch.Tensor],
    a_l: torch.Tensor, c_l: torch.Tensor, a_u: torch.Tensor, c_u: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lam_next (P,B,S,N_in), bias (P,B,S)) from lam (P,B,S,N_out), W (P|1,N_out,N_in), b (P|1,N_out) or None, lines (P|1,B,N_in)."""
    P, B, S, n_out, n_in = _check(lam, W, b, a_l, c_l, a_u, c_u)
    lam, W = lam.contiguous(), W.contiguous()
    b = None if b is None else b.contiguous()
    a_l, c_l, a_u, c_u = (t.contiguous() for t in (a_l, c_l, a_u, c_u))
    out = lam.new_empty((P, B, S, n_in))
    M = B * S
    tiles = common.MATMUL_TILES
    n_tiles = max(1, triton.cdiv(n_in, tiles["BLOCK_N"]))  # >= 1 so lam.b is still collected when N_in = 0
    partial = lam.new_empty((P, B, S, n_tiles))
    if P * M == 0:
        return out, partial.sum(-1)
    grid = (triton.cdiv(M, tiles["BLOCK_M"]), n_tiles, P)
    _backsub_kernel[grid](
        lam, W, W if b is None else b, a_l, c_l, a_u, c_u, out, partial,
        M, S, n_out, n_in, n_tiles, common.population_stride(W), 0 if b is None else common.population_stride(b), common.population_stride(a_l),
        HAS_BIAS=b is not None, PRECISION=common.dot_precision(), **tiles, **common.LAUNCH,
    )
    return out, partial.sum(-1)
