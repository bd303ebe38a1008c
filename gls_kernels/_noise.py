"""What the Triton noise ops share (a helper, not an op; docs/design.md §4): Philox and Box-Muller
building blocks, and the kernel guard.

Same math as csrc/include/gls/philox.h and gls/reference/noise.py: Philox4x32-10 on uint32 words
(tl.umulhi for the high product), uniforms ((x >> 8) + 0.5) * 2^-24 in float32 and Box-Muller on lane
pairs (0, 1) and (2, 3). On a GPU the transcendental functions are libdevice's logf / cosf / sinf,
called explicitly: the same accurate functions the CUDA kernels use, whatever a Triton version lowers
tl.log / tl.cos / tl.sin to (fast approximations in some versions, whose absolute error near u = 1
would break the cross-backend tolerance). Triton's CPU interpreter cannot call libdevice and uses
numpy's float32 functions. (Checked: the kernels compile for sm_90 without a GPU.)
"""
import os

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
PRECISE = not INTERPRET  # use libdevice (compiled kernels only)
BLOCKS = 32 if INTERPRET else 256  # Philox blocks (4 elements each) per program


def seed_words(seed: int) -> tuple[int, int]:
    """(low, high) 32-bit key words of a seed given as u64 or as its signed int64 reinterpretation."""
    seed &= 0xFFFFFFFFFFFFFFFF
    return seed & 0xFFFFFFFF, seed >> 32


@triton.jit
def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors of one shape: counter (c0..c3), key (k0, k1) -> 4 words."""
    m0 = tl.full(c0.shape, 0xD2511F53, tl.uint32)
    m1 = tl.full(c0.shape, 0xCD9E8D57, tl.uint32)
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(m0, c0)
        lo0 = m0 * c0
        hi1 = tl.umulhi(m1, c2)
        lo1 = m1 * c2
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def _uniform(x):
    return (x >> 8).to(tl.float32) * 5.9604644775390625e-8 + 2.98023223876953125e-8


@triton.jit
def _box_muller(radius_word, angle_word, PRECISE: tl.constexpr):
    ua = _uniform(radius_word)
    t = _uniform(angle_word) * 6.2831855
    if PRECISE:
        r = tl.sqrt_rn(-2.0 * libdevice.log(ua))
        return r * libdevice.cos(t), r * libdevice.sin(t)
    else:
        r = tl.sqrt_rn(-2.0 * tl.log(ua))
        return r * tl.cos(t), r * tl.sin(t)


@triton.jit
def normal4(block, member, purpose, k0, k1, PRECISE: tl.constexpr):
    """Normals of lanes 0..3 of Philox blocks `block` (int64 tensor) of one member; scalars are u32 values."""
    c0 = (block & 0xFFFFFFFF).to(tl.uint32)
    c1 = (block >> 32).to(tl.uint32)
    zero = tl.zeros(c0.shape, tl.uint32)
    c2 = zero + member.to(tl.uint32)
    c3 = zero + purpose.to(tl.uint32)
    x0, x1, x2, x3 = philox4x32_10(c0, c1, c2, c3, zero + k0.to(tl.uint32), zero + k1.to(tl.uint32))
    n0, n1 = _box_muller(x0, x1, PRECISE)
    n2, n3 = _box_muller(x2, x3, PRECISE)
    return n0, n1, n2, n3


@triton.jit
def lanes_2d(n0, n1, n2, n3):
    """(BLOCKS,) x 4 lanes -> (BLOCKS, 4), element [b, l] = lane l of block b (contiguous in memory order)."""
    lane = tl.arange(0, 4)[None, :]
    return tl.where(lane == 0, n0[:, None], tl.where(lane == 1, n1[:, None], tl.where(lane == 2, n2[:, None], n3[:, None])))


def check_members(members: torch.Tensor, op: str) -> None:
    """Kernel guard: the member words the kernels read as int64."""
    if members.dim() != 1 or members.dtype != torch.int64:
        raise ValueError(f"{op}: members must be a 1-D int64 tensor of member words, got {members.dtype} of shape {tuple(members.shape)}")


def check_sigma(sigma: torch.Tensor, d: int, like: torch.Tensor, op: str) -> int:
    """Kernel guard: stride of sigma along d (0 for a scalar); raises on a wrong shape, dtype or device."""
    if sigma.numel() != 1 and tuple(sigma.shape) != (d,):
        raise ValueError(f"{op}: sigma must be a scalar or have shape (d,) = ({d},), got {tuple(sigma.shape)}")
    if sigma.dtype != like.dtype or sigma.device != like.device:
        raise ValueError(f"{op}: sigma must have dtype {like.dtype} on {like.device}, got {sigma.dtype} on {sigma.device}")
    return 0 if sigma.numel() == 1 else 1


def rows(members: torch.Tensor, antithetic: bool) -> int:
    """Population rows of `members`: one per member, two (+eps, -eps) with antithetic pairs."""
    return members.shape[0] * (2 if antithetic else 1)
