"""The robust loss of certified training on lower bounds of the margins (CTBench convention)."""
from __future__ import annotations

import torch


def robust_loss(lower_margins: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy on the logits [0, -lb_1, ..., -lb_S] with target 0, per member.

    lower_margins (P, B, S): lower bounds of z_y - z_j (gls.compute_bounds with labels). The loss of a
    sample is log(1 + sum_j exp(-lb_j)): small once every margin is certified positive by a wide gap.
    reduction "mean" (over B) -> (P,), "sum" -> (P,), "none" -> (P, B).
    """
    if not isinstance(lower_margins, torch.Tensor) or not lower_margins.is_floating_point():
        raise TypeError("lower_margins must be a floating tensor (P, B, S)")
    if lower_margins.dim() != 3:
        raise ValueError(f"lower_margins must have shape (P, B, S), got {tuple(lower_margins.shape)}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    zero = lower_margins.new_zeros(lower_margins.shape[:2] + (1,))
    per_sample = torch.logsumexp(torch.cat([zero, -lower_margins], dim=-1), dim=-1)
    if reduction == "none":
        return per_sample
    return per_sample.mean(-1) if reduction == "mean" else per_sample.sum(-1)
