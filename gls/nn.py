"""Layers that gls adds to torch.nn so a whole certified network is one nn.Sequential."""
from __future__ import annotations

import torch
from torch import nn


class Normalize(nn.Module):
    """Input scaling (x - mean) / std along the channel axis (dim 1), broadcast over the rest.

    For images (B, C, H, W) mean and std are per channel (length C, or 1 for all channels); for flat
    inputs (B, N) they are per feature (length N) or scalar. They are buffers, not parameters: a
    population shares them, and gls bounds the network in pixel space with this layer inside it.
    """

    def __init__(self, mean, std):
        super().__init__()
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.numel() == 0 or std.numel() == 0:
            raise ValueError("Normalize: mean and std must not be empty")
        if not ((std > 0) & torch.isfinite(std)).all():  # inf would zero the input; nan fails std > 0
            raise ValueError(f"Normalize: std must be positive and finite, got {std.tolist()}")
        if not torch.isfinite(mean).all():
            raise ValueError(f"Normalize: mean must be finite, got {mean.tolist()}")
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(view)) / self.std.view(view)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"
