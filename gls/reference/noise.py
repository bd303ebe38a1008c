"""Plain-PyTorch reference of the counter-based Gaussian noise (docs/design.md §4, bit-exact contract).

u32 words are held in int64 tensors and every result is masked to 32 bits (torch's uint32 lacks the
CPU ops needed); the 32x32 -> 64-bit products of Philox are split into 16-bit halves so no
intermediate exceeds 2^49. Element i of member m's stream (seed s, purpose q) comes from block
b = i // 4, lane i % 4 of philox4x32_10((b & 0xffffffff, b >> 32, m, q), (s & 0xffffffff, s >> 32));
uniforms u = ((x >> 8) + 0.5) * 2^-24 in float32; normals by Box-Muller on lanes (0, 1) and (2, 3)
(r = sqrt(-2 ln u_even), n_even = r cos(2pi u_odd), n_odd = r sin(2pi u_odd)), all in float32.

Op signatures are those of the torch ops (csrc/ops.cpp, "noise"): `seed` is the signed 64-bit
reinterpretation of the unsigned seed (either form is accepted here), `members` an int64 tensor of
member words (R,). With `antithetic`, a population has 2R rows: rows [0, R) are +eps of members and
rows [R, 2R) are -eps of the same members. Argument checks are the ops' own (gls/meta/_noise.py); range
checks live in gls.noise, the public API.
"""
from __future__ import annotations

import torch
from torch import Tensor

from gls.meta._noise import check_dim, check_philox, check_sigma, check_theta, check_weights

MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments


def _mulhilo(a: int, b: Tensor) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a * b, b an int64 tensor of u32 words."""
    p_lo = a * (b & 0xFFFF)  # < 2^48
    p_hi = a * (b >> 16)  # < 2^48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = (((p_hi & 0xFFFF) << 16) + p_lo) & MASK32
    return hi, lo


def philox4x32_10(counter: Tensor, key: Tensor) -> Tensor:
    """Philox4x32-10 block function: counter (..., 4), key (..., 2) of u32 words in int64 -> (..., 4) int64.

    Leading dimensions broadcast. Words are taken modulo 2^32.
    """
    check_philox(counter, key)
    c0, c1, c2, c3 = (w & MASK32 for w in counter.unbind(-1))
    k0, k1 = (w & MASK32 for w in key.unbind(-1))
    for _ in range(10):
        hi0, lo0 = _mulhilo(_M0, c0)
        hi1, lo1 = _mulhilo(_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + _W0) & MASK32, (k1 + _W1) & MASK32
    return torch.stack(torch.broadcast_tensors(c0, c1, c2, c3), dim=-1)


def uniform(words: Tensor) -> Tensor:
    """u32 words (int64) -> float32 uniforms ((x >> 8) + 0.5) * 2^-24, in (0, 1]."""
    return (words >> 8).to(torch.float32) * 2.0**-24 + 2.0**-25


def box_muller(words: Tensor) -> Tensor:
    """(..., 4) u32 words -> (..., 4) float32 standard normals (lane pairs (0, 1) and (2, 3))."""
    u = uniform(words)
    r = torch.sqrt(-2.0 * torch.log(u[..., 0::2]))
    t = u[..., 1::2] * torch.tensor(6.2831855, dtype=torch.float32, device=u.device)  # float32 product, as on every backend
    return torch.stack((r * torch.cos(t), r * torch.sin(t)), dim=-1).flatten(-2)  # (n_even, n_odd) per pair


def member_normals(members: Tensor, d: int, seed: int, purpose: int) -> Tensor:
    """(R, d) float32: row r is the first d normals of member members[r]'s stream."""
    check_dim(d, "noise")
    seed &= 0xFFFFFFFFFFFFFFFF
    device = members.device
    blocks = torch.arange((d + 3) // 4, dtype=torch.int64, device=device)
    m = members.to(torch.int64).view(-1, 1)
    counter = torch.stack(torch.broadcast_tensors(blocks & MASK32, blocks >> 32, m, torch.full_like(m, purpose)), dim=-1)
    key = torch.tensor([seed & MASK32, seed >> 32], dtype=torch.int64, device=device)
    normals = box_muller(philox4x32_10(counter, key))  # (R, blocks, 4)
    return normals.reshape(m.shape[0], -1)[:, :d]


def _population(members: Tensor, d: int, seed: int, purpose: int, antithetic: bool) -> Tensor:
    eps = member_normals(members, d, seed, purpose)
    return torch.cat((eps, -eps)) if antithetic else eps


def noise_normal(members: Tensor, d: int, seed: int, purpose: int, antithetic: bool) -> Tensor:
    """(R or 2R, d) float32 normals of a population (see the module docstring for the row layout)."""
    return _population(members, d, seed, purpose, antithetic)


def _sigma_row(sigma: Tensor, d: int, who: str) -> Tensor:
    check_sigma(sigma, d, who)
    return sigma.reshape(-1)


def noise_perturb(theta: Tensor, sigma: Tensor, members: Tensor, seed: int, purpose: int, antithetic: bool) -> Tensor:
    """(P, d) perturbed parameters theta + sigma * eps_p, theta (d,), sigma scalar or (d,)."""
    check_theta(theta)
    d = theta.shape[0]
    eps = _population(members, d, seed, purpose, antithetic).to(theta.dtype)
    return theta + _sigma_row(sigma, d, "noise_perturb") * eps


def _row_weights(weights: Tensor, n_rows: int, d: int, who: str) -> Tensor:
    check_weights(weights, n_rows, d, who)
    return weights if weights.dim() == 2 else weights[:, None]


def noise_weighted_sum(weights: Tensor, sigma: Tensor, members: Tensor, d: int, seed: int, purpose: int, antithetic: bool) -> Tensor:
    """(d,) sum_p weights_p * sigma * eps_p; weights (P,) or (P, d) (the latter: elementwise weights)."""
    eps = _population(members, d, seed, purpose, antithetic).to(weights.dtype)
    w = _row_weights(weights, eps.shape[0], d, "noise_weighted_sum")
    return (w * _sigma_row(sigma, d, "noise_weighted_sum") * eps).sum(0)


def noise_sigma_weighted_sum(weights: Tensor, sigma: Tensor, members: Tensor, d: int, seed: int, purpose: int, antithetic: bool) -> Tensor:
    """(d,) sum_p weights_p * ((sigma eps_p)^2 - sigma^2) / sigma, computed as sigma * (eps_p^2 - 1) (0 at sigma = 0)."""
    eps = _population(members, d, seed, purpose, antithetic).to(weights.dtype)
    w = _row_weights(weights, eps.shape[0], d, "noise_sigma_weighted_sum")
    return (w * _sigma_row(sigma, d, "noise_sigma_weighted_sum") * (eps * eps - 1)).sum(0)
