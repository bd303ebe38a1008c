"""concretize in Triton: lower bound of lam.x + bias over the input box, one fused row reduction.

Each program reduces BLOCK_M rows of lam (one population member) over N in BLOCK_N chunks,
lam^+ x_lo + lam^- x_hi with the box row of the row's batch element, and adds the bias. Sums stay
in registers (no atomics), so results are deterministic. Fake kernel and backward: gls/meta/concretize.py.
"""
import torch
import triton
import triton.language as tl

from gls_kernels import common


@triton.jit
def _concretize_kernel(lam_ptr, bias_ptr, lo_ptr, hi_ptr, out_ptr, M, S, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    p = tl.program_id(1).to(tl.int64)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.arange(0, BLOCK_N)
    m_ok = rm < M
    rows = rm.to(tl.int64)
    lam_rows = lam_ptr + p * M * N + rows[:, None] * N
    box_rows = (rows // S)[:, None] * N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + rn
        mask = m_ok[:, None] & (n < N)[None, :]
        lam = tl.load(lam_rows + n[None, :], mask=mask, other=0.0)
        lo = tl.load(lo_ptr + box_rows + n[None, :], mask=mask, other=0.0)
        hi = tl.load(hi_ptr + box_rows + n[None, :], mask=mask, other=0.0)
        acc += tl.maximum(lam, 0.0) * lo + tl.minimum(lam, 0.0) * hi
    bias = tl.load(bias_ptr + p * M + rows, mask=m_ok, other=0.0)
    tl.store(out_ptr + p * M + rows, tl.sum(acc, axis=1) + bias, mask=m_ok)


def _check(lam, bias, x_lo, x_hi):
    op = "concretize"
    common.check_inputs(op, {"lam": lam, "bias": bias, "x_lo": x_lo, "x_hi": x_hi}, {"lam": 4, "bias": 3, "x_lo": 2, "x_hi": 2})
    P, B, S, N = lam.shape
    if tuple(bias.shape) != (P, B, S):
        raise ValueError(f"gls_triton::{op}: bias must have shape (P, B, S) = {(P, B, S)}, got {tuple(bias.shape)}")
    for name, t in (("x_lo", x_lo), ("x_hi", x_hi)):
        if tuple(t.shape) != (B, N):
            raise ValueError(f"gls_triton::{op}: {name} must have shape (B, N) = {(B, N)}, got {tuple(t.shape)}")
    return P, B, S, N


@torch.library.custom_op("gls_triton::concretize", mutates_args=())
def concretize(lam: torch.Tensor, bias: torch.Tensor, x_lo: torch.Tensor, x_hi: torch.Tensor) -> torch.Tensor:
    """lam^+ x_lo + lam^- x_hi + bias -> (P,B,S), from lam (P,B,S,N), bias (P,B,S), x_lo and x_hi (B,N)."""
    P, B, S, N = _check(lam, bias, x_lo, x_hi)
    lam, bias, x_lo, x_hi = (t.contiguous() for t in (lam, bias, x_lo, x_hi))
    out = bias.new_empty((P, B, S))
    M = B * S
    if P * M:
        tiles = common.ROW_REDUCE_TILES
        grid = (triton.cdiv(M, tiles["BLOCK_M"]), P)
        _concretize_kernel[grid](lam, bias, x_lo, x_hi, out, M, S, N, **tiles, **common.LAUNCH)
    return out
