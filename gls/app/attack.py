"""PGD (L-infinity, random start, restarts): the empirical upper bound on robust accuracy.

Maximises the margin loss ``max_{j != y} z_j - z_y`` (stronger than cross-entropy near the decision
boundary) with signed-gradient steps projected on ``[x - eps, x + eps] ∩ domain``; a sample counts as
broken as soon as any iterate of any restart is misclassified.
"""
from __future__ import annotations

import torch
from torch import nn


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(nn.functional.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(1)
    return other - true


def pgd_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, steps: int = 40,
               restarts: int = 1, step_size: float | None = None, domain=(0.0, 1.0),
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Bool mask (B,): True where PGD found no misclassified point within eps (so the sample may be
    robust), False where it did or where x itself is misclassified."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if steps < 0 or restarts < 1:
        raise ValueError("PGD needs steps >= 0 and restarts >= 1")
    lo, hi = (x - eps).clamp(min=domain[0]), (x + eps).clamp(max=domain[1])
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else step_size
    with torch.no_grad():
        robust = _margin(model(x), y) < 0
    if eps == 0 or steps == 0:
        return robust
    for _ in range(restarts):
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        adv = lo + (hi - lo) * noise
        for _ in range(steps):
            adv.requires_grad_(True)
            margin = _margin(model(adv), y)
            (grad,) = torch.autograd.grad(margin.sum(), adv)
            with torch.no_grad():
                robust &= margin < 0
                adv = torch.minimum(torch.maximum(adv + step_size * grad.sign(), lo), hi)
        with torch.no_grad():
            robust &= _margin(model(adv), y) < 0
    return robust
