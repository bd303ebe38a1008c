"""Input checks shared by the noise ops (the Python side of csrc/include/gls/noise_checks.h).

One definition used by the fake kernels of every namespace (gls/meta/noise_*.py), by the reference
(gls.reference.noise) and by the public API (gls.noise), so the ops' argument contract is written once
in Python. Value checks that only the API makes (seed range, non-negative sigma) stay in gls.noise.
"""
from __future__ import annotations

import torch
from torch import Tensor


def rows(members: Tensor, antithetic: bool) -> int:
    """Population rows of `members`: one per member, two (+eps, -eps) with antithetic pairs."""
    return members.shape[0] * (2 if antithetic else 1)


def check_dim(d: int, op: str) -> None:
    if d < 1:
        raise ValueError(f"{op}: the number of elements d must be >= 1, got {d}")


def check_members(members: Tensor, op: str) -> None:
    if members.dim() != 1 or members.dtype != torch.int64:
        raise ValueError(f"{op}: members must be a 1-D int64 tensor of member words, got {members.dtype} of shape {tuple(members.shape)}")


def check_theta(theta: Tensor) -> None:
    if theta.dim() != 1 or theta.shape[0] < 1:
        raise ValueError(f"noise_perturb: theta must be a non-empty flat (d,) vector, got shape {tuple(theta.shape)}")


def check_sigma(sigma: Tensor, d: int, op: str) -> None:
    if sigma.numel() != 1 and tuple(sigma.shape) != (d,):
        raise ValueError(f"{op}: sigma must be a scalar or have shape (d,) = ({d},), got shape {tuple(sigma.shape)}")


def check_weights(weights: Tensor, n_rows: int, d: int, op: str) -> None:
    if weights.dim() not in (1, 2) or weights.shape[0] != n_rows or (weights.dim() == 2 and weights.shape[1] != d):
        raise ValueError(f"{op}: weights must be (P,) or (P, d) with P = {n_rows} population rows and d = {d}, got shape {tuple(weights.shape)}")


def check_philox(counter: Tensor, key: Tensor) -> None:
    if counter.shape[-1:] != (4,) or key.shape[-1:] != (2,):
        raise ValueError(f"philox4x32_10: counter must be (..., 4) and key (..., 2), got {tuple(counter.shape)} and {tuple(key.shape)}")
    if counter.dtype != torch.int64 or key.dtype != torch.int64:
        raise TypeError(f"philox4x32_10: counter and key must be int64, got {counter.dtype} and {key.dtype}")


def check_weighted_sum(weights: Tensor, sigma: Tensor, members: Tensor, d: int, antithetic: bool, op: str) -> None:
    """The contract of noise_weighted_sum and noise_sigma_weighted_sum (same signature)."""
    check_members(members, op)
    check_dim(d, op)
    check_weights(weights, rows(members, antithetic), d, op)
    check_sigma(sigma, d, op)
