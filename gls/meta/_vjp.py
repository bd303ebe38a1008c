"""Autograd of an op by the vector-Jacobian product of its reference definition.

A kernel computes the forward; the backward re-runs the plain-PyTorch reference under autograd and
back-propagates through it, so gradients are those of the reference by construction (the contract the
tests check). Ops that need a faster backward define a closed-form one in their metadata module instead.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch


def register_reference_vjp(qualname: str, reference: Callable, tensor_args: Sequence[int]) -> None:
    """Register autograd for `qualname` as the VJP of `reference` w.r.t. the positional args `tensor_args`."""

    def setup_context(ctx, inputs, output):
        ctx.inputs = inputs
        ctx.save_for_backward(*[inputs[i] if isinstance(inputs[i], torch.Tensor) else None for i in tensor_args])

    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        args = list(ctx.inputs)
        leaves = []
        for slot, i in enumerate(tensor_args):
            t = saved[slot]
            if t is not None and ctx.needs_input_grad[i]:
                t = t.detach().requires_grad_(True)
                leaves.append((i, t))
            args[i] = t
        result = [None] * len(args)
        if not leaves:
            return tuple(result)
        with torch.enable_grad():
            out = reference(*args)
        outs = out if isinstance(out, (tuple, list)) else (out,)
        pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
        if pairs:
            got = torch.autograd.grad([o for o, _ in pairs], [t for _, t in leaves], [g for _, g in pairs], allow_unused=True)
            for (i, t), g in zip(leaves, got):
                result[i] = torch.zeros_like(t) if g is None else g
        return tuple(result)

    torch.library.register_autograd(qualname, backward, setup_context=setup_context)
