"""relu_relax in Triton: the ReLU relaxation lines from pre-activation bounds, one elementwise pass.

Same maths as gls.reference.bound_ops.relu_relax (the slope is divided with round-to-nearest so it
matches the reference bit for bit). Fake kernel and backward: gls/meta/relu_relax.py.
"""
import torch
import triton
import triton.language as tl

from gls_kernels import common


@triton.jit
def _relu_relax_kernel(l_ptr, u_ptr, al_ptr, cl_ptr, au_ptr, cu_ptr, n, TRIANGLE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    l = tl.load(l_ptr + offs, mask=mask, other=0.0)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0)
    active = l >= 0
    unstable = (~active) & (u > 0)
    act = active.to(tl.float32)
    zero = tl.zeros_like(l)
    if TRIANGLE:  # crown-ibp / deeppoly: upper chord, lower slope 1 if u > -l else 0
        slope = tl.math.div_rn(u, tl.where(unstable, u - l, 1.0))
        a_l = tl.where(unstable, (u > -l).to(tl.float32), act)
        a_u = tl.where(unstable, slope, act)
        c1, c2 = -l * slope, u * (1.0 - slope)  # see the reference: the larger of two equal numbers
        c_u = tl.where(unstable, tl.where(c1 >= c2, c1, c2), zero)
    else:  # ibp / hbox: the box 0 <= y <= u
        a_l = act
        a_u = act
        c_u = tl.where(unstable, u, zero)
    tl.store(al_ptr + offs, a_l, mask=mask)
    tl.store(cl_ptr + offs, zero, mask=mask)
    tl.store(au_ptr + offs, a_u, mask=mask)
    tl.store(cu_ptr + offs, c_u, mask=mask)


def _check(l, u, method):
    """Kernel guard; returns whether the method uses the triangle (codes 2, 3) rather than the box."""
    code = common.relax_code(method)  # ValueError on an unknown method
    common.check_inputs("relu_relax", {"l": l, "u": u}, {})
    if l.shape != u.shape:
        raise ValueError(f"gls_triton::relu_relax: l and u must have the same shape, got {tuple(l.shape)} and {tuple(u.shape)}")
    return code >= 2


@torch.library.custom_op("gls_triton::relu_relax", mutates_args=())
def relu_relax(l: torch.Tensor, u: torch.Tensor, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lines a_l*z + c_l <= relu(z) <= a_u*z + c_u for l <= z <= u, any shape; float32."""
    triangle = _check(l, u, method)
    l, u = l.contiguous(), u.contiguous()
    out = [torch.empty_like(l, memory_format=torch.contiguous_format) for _ in range(4)]
    n = l.numel()
    if n:
        block = common.ELEMENTWISE_BLOCK
        _relu_relax_kernel[(triton.cdiv(n, block),)](l, u, *out, n, TRIANGLE=triangle, BLOCK=block, **common.LAUNCH)
    return tuple(out)
