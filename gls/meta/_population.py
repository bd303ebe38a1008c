"""Helpers of the closed-form backwards (gls/meta/backsub_*.py): gradients of inputs shared by the population."""
from __future__ import annotations

import torch


def reduce_members(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Sum `grad` over the population axis where `like` is shared by the population (size 1)."""
    return grad.sum(0, keepdim=True) if like.shape[0] == 1 and grad.shape[0] != 1 else grad
