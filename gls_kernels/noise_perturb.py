"""Triton op gls_triton::noise_perturb: theta + sigma * eps_p for every population row, noise never stored.

The kernel also serves gls_triton::noise_normal (PERTURB off: the rows are the normals themselves).
Row layout and stream definition: gls/reference/noise.py. Fake kernel and backward (shared with
gls::noise_perturb): gls/meta/noise_perturb.py.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from gls_kernels._noise import BLOCKS, PRECISE, check_members, check_sigma, lanes_2d, normal4, rows, seed_words


@triton.jit
def _population_kernel(theta_ptr, sigma_ptr, sigma_stride, members_ptr, n_members, d, k0, k1, purpose, out_ptr,
                       PERTURB: tl.constexpr, ANTITHETIC: tl.constexpr, BLOCK: tl.constexpr, PRECISE: tl.constexpr):
    """Program (r, j): elements of Philox blocks j*BLOCK .. of member r, written to row r (+eps) and,
    with ANTITHETIC, to row n_members + r (-eps)."""
    r = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    member = tl.load(members_ptr + r).to(tl.uint32)
    n0, n1, n2, n3 = normal4(block, member, purpose, k0, k1, PRECISE)
    idx = block[:, None] * 4 + tl.arange(0, 4)[None, :]
    mask = idx < d
    e = lanes_2d(n0, n1, n2, n3)
    if PERTURB:
        theta = tl.load(theta_ptr + idx, mask=mask)
        sigma = tl.load(sigma_ptr + idx * sigma_stride, mask=mask)
        e = e.to(theta.dtype)
        tl.store(out_ptr + r * d + idx, theta + sigma * e, mask=mask)
        if ANTITHETIC:
            tl.store(out_ptr + (n_members + r) * d + idx, theta + sigma * -e, mask=mask)
    else:
        tl.store(out_ptr + r * d + idx, e, mask=mask)
        if ANTITHETIC:
            tl.store(out_ptr + (n_members + r) * d + idx, -e, mask=mask)


def population(theta, sigma, members: Tensor, d: int, seed: int, purpose: int, antithetic: bool, out: Tensor) -> Tensor:
    """Fill out (rows, d) with theta + sigma * eps_row (theta None: eps_row itself)."""
    k0, k1 = seed_words(seed)
    if members.shape[0]:
        perturb = theta is not None
        grid = (members.shape[0], triton.cdiv(triton.cdiv(d, 4), BLOCKS))
        _population_kernel[grid](theta if perturb else out, sigma.reshape(-1) if perturb else out, 1 if perturb and sigma.numel() > 1 else 0,
                                 members.contiguous(), members.shape[0], d, k0, k1, purpose & 0xFFFFFFFF, out,
                                 PERTURB=perturb, ANTITHETIC=antithetic, BLOCK=BLOCKS, PRECISE=PRECISE)
    return out


def _check(theta, sigma, members):
    """Kernel guard."""
    check_members(members, "noise_perturb")
    if theta.dim() != 1 or theta.shape[0] < 1:
        raise ValueError(f"noise_perturb: theta must be a non-empty flat (d,) vector, got shape {tuple(theta.shape)}")
    check_sigma(sigma, theta.shape[0], theta, "noise_perturb")


@torch.library.custom_op("gls_triton::noise_perturb", mutates_args=())
def noise_perturb(theta: Tensor, sigma: Tensor, members: Tensor, seed: int, purpose: int, antithetic: bool) -> Tensor:
    """(P, d) rows theta + sigma * eps_p (see gls.reference.noise.noise_perturb)."""
    _check(theta, sigma, members)
    theta = theta.contiguous()
    out = torch.empty((rows(members, antithetic), theta.shape[0]), dtype=theta.dtype, device=theta.device)
    return population(theta, sigma.contiguous(), members, theta.shape[0], seed, purpose, antithetic, out)

