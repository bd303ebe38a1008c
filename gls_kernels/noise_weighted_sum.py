"""Triton op gls_triton::noise_weighted_sum: sum_p w_p * sigma * eps_p (the PGPE centre gradient), eps regenerated.

Each program owns BLOCKS Philox blocks (4 * BLOCKS consecutive elements) and loops over the members in
order (each stream generated once per antithetic pair), so memory is O(d) and the sum order is fixed. The kernel also serves
gls_triton::noise_sigma_weighted_sum (SIGMA_TERM: eps^2 - 1 in place of eps). Weights are (P,) or
(P, d) (elementwise, as in the sigma-gradient of noise_perturb). Fake kernel and backward:
gls/meta/noise_weighted_sum.py.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from gls_kernels._noise import BLOCKS, PRECISE, check_members, check_sigma, lanes_2d, normal4, rows, seed_words


@triton.jit
def _weighted_sum_kernel(w_ptr, sigma_ptr, sigma_stride, members_ptr, n_members, d, k0, k1, purpose, out_ptr,
                         W2D: tl.constexpr, SIGMA_TERM: tl.constexpr, ANTITHETIC: tl.constexpr, BLOCK: tl.constexpr,
                         PRECISE: tl.constexpr):
    """Each stream once per antithetic pair: (w[r] - w[R + r]) * e, or (w[r] + w[R + r]) * (e^2 - 1)."""
    block = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    idx = block[:, None] * 4 + tl.arange(0, 4)[None, :]
    mask = idx < d
    acc = tl.zeros((BLOCK, 4), dtype=w_ptr.dtype.element_ty)
    for r in range(0, n_members):
        member = tl.load(members_ptr + r).to(tl.uint32)
        n0, n1, n2, n3 = normal4(block, member, purpose, k0, k1, PRECISE)
        e = lanes_2d(n0, n1, n2, n3).to(acc.dtype)
        if SIGMA_TERM:
            e = e * e - 1.0
        if W2D:
            w = tl.load(w_ptr + r * d + idx, mask=mask, other=0.0)
            if ANTITHETIC:
                w_pair = tl.load(w_ptr + (n_members + r) * d + idx, mask=mask, other=0.0)
        else:
            w = tl.load(w_ptr + r)
            if ANTITHETIC:
                w_pair = tl.load(w_ptr + n_members + r)
        if ANTITHETIC:
            if SIGMA_TERM:
                w = w + w_pair
            else:
                w = w - w_pair
        acc += w * e
    sigma = tl.load(sigma_ptr + idx * sigma_stride, mask=mask)
    tl.store(out_ptr + idx, sigma * acc, mask=mask)


def check(weights: Tensor, sigma: Tensor, members: Tensor, d: int, antithetic: bool, op: str) -> None:
    """Kernel guard of this op and of noise_sigma_weighted_sum."""
    check_members(members, op)
    if d < 1:
        raise ValueError(f"{op}: the number of elements d must be >= 1, got {d}")
    n_rows = rows(members, antithetic)
    if weights.dim() not in (1, 2) or weights.shape[0] != n_rows or (weights.dim() == 2 and weights.shape[1] != d):
        raise ValueError(f"{op}: weights must be (P,) or (P, d) with P = {n_rows} population rows and d = {d}, got {tuple(weights.shape)}")
    check_sigma(sigma, d, weights, op)


def weighted_sum(weights, sigma, members, d, seed, purpose, antithetic, sigma_term: bool) -> Tensor:
    w = weights.contiguous()
    out = torch.empty((d,), dtype=w.dtype, device=w.device)
    k0, k1 = seed_words(seed)
    grid = (triton.cdiv(triton.cdiv(d, 4), BLOCKS),)
    _weighted_sum_kernel[grid](w, sigma.reshape(-1).contiguous(), 0 if sigma.numel() == 1 else 1, members.contiguous(), members.shape[0], d, k0, k1, purpose & 0xFFFFFFFF, out, W2D=w.dim() == 2, SIGMA_TERM=sigma_term,
                               ANTITHETIC=antithetic, BLOCK=BLOCKS, PRECISE=PRECISE)
    return out


@torch.library.custom_op("gls_triton::noise_weighted_sum", mutates_args=())
def noise_weighted_sum(weights: Tensor, sigma: Tensor, members: Tensor, d: int, seed: int, purpose: int, antithetic: bool) -> Tensor:
    """(d,) sum_p weights_p * sigma * eps_p (see gls.reference.noise.noise_weighted_sum)."""
    check(weights, sigma, members, d, antithetic, "noise_weighted_sum")
    return weighted_sum(weights, sigma, members, d, seed, purpose, antithetic, sigma_term=False)

