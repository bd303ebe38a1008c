"""Triton op gls_triton::philox4x32_10: the raw Philox4x32-10 block function on int64-held u32 words.

Fake kernel: gls/meta/philox4x32_10.py.
"""
import torch
import triton
import triton.language as tl
from torch import Tensor

from gls_kernels._noise import BLOCKS, philox4x32_10 as _philox


@triton.jit
def _philox_kernel(c_ptr, k_ptr, out_ptr, n, BLOCK: tl.constexpr):
    j = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = j < n
    c0 = tl.load(c_ptr + 4 * j, mask=mask, other=0).to(tl.uint32)
    c1 = tl.load(c_ptr + 4 * j + 1, mask=mask, other=0).to(tl.uint32)
    c2 = tl.load(c_ptr + 4 * j + 2, mask=mask, other=0).to(tl.uint32)
    c3 = tl.load(c_ptr + 4 * j + 3, mask=mask, other=0).to(tl.uint32)
    k0 = tl.load(k_ptr + 2 * j, mask=mask, other=0).to(tl.uint32)
    k1 = tl.load(k_ptr + 2 * j + 1, mask=mask, other=0).to(tl.uint32)
    x0, x1, x2, x3 = _philox(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + 4 * j, x0.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * j + 1, x1.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * j + 2, x2.to(tl.int64), mask=mask)
    tl.store(out_ptr + 4 * j + 3, x3.to(tl.int64), mask=mask)


def _check(counter: Tensor, key: Tensor) -> None:
    """Kernel guard."""
    if counter.dim() < 1 or counter.shape[-1] != 4 or key.shape[-1:] != (2,) or key.shape[:-1] != counter.shape[:-1]:
        raise ValueError(f"philox4x32_10: counter must be (..., 4) and key (..., 2) with the same leading shape, got {tuple(counter.shape)} and {tuple(key.shape)}")
    if counter.dtype != torch.int64 or key.dtype != torch.int64:
        raise TypeError(f"philox4x32_10: counter and key must be int64 tensors of u32 words, got {counter.dtype} and {key.dtype}")


@torch.library.custom_op("gls_triton::philox4x32_10", mutates_args=())
def philox4x32_10(counter: Tensor, key: Tensor) -> Tensor:
    """Philox4x32-10: counter (..., 4), key (..., 2) int64 u32 words (taken modulo 2^32) -> (..., 4) int64."""
    _check(counter, key)
    c, k = counter.contiguous(), key.contiguous()
    out = torch.empty_like(c)
    n = c.numel() // 4
    if n:
        _philox_kernel[(triton.cdiv(n, 4 * BLOCKS),)](c, k, out, n, BLOCK=4 * BLOCKS)
    return out

