"""ibp_affine: input check, fake kernel and autograd (the VJP of the reference on the joint population axis)."""
from __future__ import annotations

import torch

from gls.meta._vjp import register_reference_vjp
from gls.reference import bound_ops as ref


def check(mid, rad, W, b) -> tuple[int, int, int]:
    """The op's contract; returns (P, B, N_out) of both outputs, P joint over mid, rad, W and b.

    (A backend may accept less: the Triton kernel refuses a per-member b with everything else shared.)
    """
    if mid.dim() != 3 or rad.dim() != 3 or W.dim() != 3:
        raise ValueError(f"ibp_affine: mid, rad and W must be 3-D, got shapes {tuple(mid.shape)}, {tuple(rad.shape)}, {tuple(W.shape)}")
    if mid.shape[1:] != rad.shape[1:] or W.shape[2] != mid.shape[2]:
        raise ValueError(f"ibp_affine: mid and rad (P|1, B, N_in) and W (P|1, N_out, N_in) disagree: {tuple(mid.shape)}, "
                         f"{tuple(rad.shape)}, {tuple(W.shape)}")
    if b is not None and (b.dim() != 2 or b.shape[1] != W.shape[1]):
        raise ValueError(f"ibp_affine: b must have shape (P|1, N_out={W.shape[1]}), got {tuple(b.shape)}")
    members = [t.shape[0] for t in (mid, rad, W, b) if t is not None and t.shape[0] != 1]
    if any(m != members[0] for m in members):
        raise ValueError(f"ibp_affine: population sizes {members} of mid, rad, W and b must match or be 1")
    return (members[0] if members else 1), mid.shape[1], W.shape[1]


def joint(mid, rad, W, b):
    """The reference with both outputs on the joint population axis, as the kernels return them.

    (The reference broadcasts each output on its own: with only b or only mid per member, its rad has P = 1.)
    """
    return tuple(torch.broadcast_tensors(*ref.ibp_affine(mid, rad, W, b)))


def fake(mid, rad, W, b):
    shape = check(mid, rad, W, b)
    return mid.new_empty(shape), mid.new_empty(shape)


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::ibp_affine")(fake)
    register_reference_vjp(f"{namespace}::ibp_affine", joint, tensor_args=(0, 1, 2, 3))
