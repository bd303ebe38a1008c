"""Fake kernels and autograd for the compiled bound-propagation ops (schemas in csrc/ops.cpp).

backsub_linear_relu has a closed-form backward (gls/native/backsub_backward.py); the others back-propagate
through their reference (gls/native/autograd.py).
"""
from __future__ import annotations

import torch

from gls.native import backsub_backward, backsub_conv_backward
from gls.native.autograd import register_reference_vjp
from gls.reference import bound_ops as ref


@torch.library.register_fake("gls::relu_relax")
def _relu_relax_fake(l, u, method):
    torch._check(l.shape == u.shape, lambda: "relu_relax: l and u must have the same shape")
    return tuple(torch.empty_like(l) for _ in range(4))


register_reference_vjp("gls::relu_relax", ref.relu_relax, tensor_args=(0, 1))


@torch.library.register_fake("gls::backsub_linear_relu")
def _backsub_linear_relu_fake(lam, W, b, a_l, c_l, a_u, c_u):
    torch._check(lam.dim() == 4 and W.dim() == 3, lambda: "backsub_linear_relu: lam must be 4-D and W 3-D")
    P, B, S, _ = lam.shape
    return lam.new_empty((P, B, S, W.shape[-1])), lam.new_empty((P, B, S))


torch.library.register_autograd("gls::backsub_linear_relu", backsub_backward.backward, setup_context=backsub_backward.setup_context)


@torch.library.register_fake("gls::backsub_conv_relu")
def _backsub_conv_relu_fake(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation):
    torch._check(lam.dim() == 6 and W.dim() == 5, lambda: "backsub_conv_relu: lam must be 6-D and W 5-D")
    P, B, R, _, h, w = lam.shape
    kh, kw = W.shape[-2:]
    size = ((h - 1) * stride[0] + dilation[0] * (kh - 1) + 1, (w - 1) * stride[1] + dilation[1] * (kw - 1) + 1)
    return lam.new_empty((P, B, R, W.shape[2], *size)), lam.new_empty((P, B, R))


torch.library.register_autograd("gls::backsub_conv_relu", backsub_conv_backward.backward,
                                setup_context=backsub_conv_backward.setup_context)


@torch.library.register_fake("gls::backsub_conv_relu_backward")
def _backsub_conv_relu_backward_fake(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation, grad_lam, grad_bias):
    P, B = lam.shape[:2]
    maps = lam.new_empty((P, B, *a_l.shape[2:]))
    d_b = lam.new_empty((P, W.shape[1])) if b is not None else lam.new_empty((0,))
    return (torch.empty_like(lam), lam.new_empty((P, *W.shape[1:])), d_b, maps, torch.empty_like(maps),
            torch.empty_like(maps), torch.empty_like(maps))


@torch.library.register_fake("gls::concretize")
def _concretize_fake(lam, bias, x_lo, x_hi):
    torch._check(lam.dim() == 4, lambda: "concretize: lam must be 4-D (P,B,S,N)")
    return lam.new_empty(lam.shape[:3])


register_reference_vjp("gls::concretize", ref.concretize, tensor_args=(0, 1, 2, 3))


@torch.library.register_fake("gls::ibp_affine")
def _ibp_affine_fake(mid, rad, W, b):
    torch._check(mid.dim() == 3 and rad.dim() == 3 and W.dim() == 3, lambda: "ibp_affine: mid, rad and W must be 3-D")
    members = [t.shape[0] for t in (mid, rad, W, b) if t is not None and t.shape[0] != 1]
    P = members[-1] if members else 1
    shape = (P, mid.shape[1], W.shape[1])
    return mid.new_empty(shape), mid.new_empty(shape)


def _ibp_affine_joint(mid, rad, W, b):
    """The reference with both outputs on the joint population axis, as the kernels return them.

    (The reference broadcasts each output on its own: with only b or only mid per member, its rad has P = 1.)
    """
    return tuple(torch.broadcast_tensors(*ref.ibp_affine(mid, rad, W, b)))


register_reference_vjp("gls::ibp_affine", _ibp_affine_joint, tensor_args=(0, 1, 2, 3))


@torch.library.register_fake("gls::backsub_linear_relu_backward")
def _backsub_linear_relu_backward_fake(lam, W, grad_lam, grad_bias, a_l, c_l, a_u, c_u):
    P, B, _, _ = lam.shape
    relax = lam.new_empty((P, B, W.shape[-1]))
    return torch.empty_like(grad_lam), relax, torch.empty_like(relax), torch.empty_like(relax), torch.empty_like(relax)
