"""relu_relax: input check, fake kernel and autograd (the VJP of gls.reference.bound_ops.relu_relax)."""
from __future__ import annotations

import torch

from gls.meta._vjp import register_reference_vjp
from gls.reference import bound_ops as ref
from gls_kernels.common import relax_code


def check(l, u, method) -> None:
    """The op's contract: a known method and bounds of one shape."""
    relax_code(method)
    if l.shape != u.shape:
        raise ValueError(f"relu_relax: l and u must have the same shape, got {tuple(l.shape)} and {tuple(u.shape)}")


def fake(l, u, method):
    check(l, u, method)
    return tuple(torch.empty_like(l, memory_format=torch.contiguous_format) for _ in range(4))


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::relu_relax")(fake)
    register_reference_vjp(f"{namespace}::relu_relax", ref.relu_relax, tensor_args=(0, 1))
