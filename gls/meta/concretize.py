"""concretize: input check, fake kernel and autograd (the VJP of gls.reference.bound_ops.concretize)."""
from __future__ import annotations

import torch

from gls.meta._vjp import register_reference_vjp
from gls.reference import bound_ops as ref


def check(lam, bias, x_lo, x_hi) -> tuple[int, int, int, int]:
    """The op's contract; returns (P, B, S, N)."""
    if lam.dim() != 4:
        raise ValueError(f"concretize: lam must be 4-D (P,B,S,N), got shape {tuple(lam.shape)}")
    P, B, S, N = lam.shape
    if tuple(bias.shape) != (P, B, S):
        raise ValueError(f"concretize: bias must have shape (P, B, S) = {(P, B, S)}, got {tuple(bias.shape)}")
    for name, t in (("x_lo", x_lo), ("x_hi", x_hi)):
        if tuple(t.shape) != (B, N):
            raise ValueError(f"concretize: {name} must have shape (B, N) = {(B, N)}, got {tuple(t.shape)}")
    return P, B, S, N


def fake(lam, bias, x_lo, x_hi):
    P, B, S, _ = check(lam, bias, x_lo, x_hi)
    return lam.new_empty((P, B, S))


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::concretize")(fake)
    register_reference_vjp(f"{namespace}::concretize", ref.concretize, tensor_args=(0, 1, 2, 3))
