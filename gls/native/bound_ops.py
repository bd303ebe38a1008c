"""Fake kernels and autograd for the compiled bound-propagation ops (schemas in csrc/ops.cpp)."""
from __future__ import annotations

import torch

from gls.native.autograd import register_reference_vjp
from gls.reference import bound_ops as ref


@torch.library.register_fake("gls::relu_relax")
def _relu_relax_fake(l, u, method):
    torch._check(l.shape == u.shape, lambda: "relu_relax: l and u must have the same shape")
    return tuple(torch.empty_like(l) for _ in range(4))


register_reference_vjp("gls::relu_relax", ref.relu_relax, tensor_args=(0, 1))
