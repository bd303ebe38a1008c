"""Counter-based Gaussian noise: every (member, weight index) maps to a fixed normal, regenerated on demand.

PGPE and RGS perturb every weight of every population member; storing that noise costs P * d floats
(CNN7: d ~ 17M, P = 256 -> 17 GB). Here the noise of (seed, purpose, member, index) is a pure
function computed by Philox4x32-10 (docs/design.md §4), so the fused ops `perturb` and
`noise_weighted_sum` / `noise_sigma_weighted_sum` regenerate it where needed and nothing of size
P * d exists beyond what the caller asks for.

The stream, identical on every backend (reference, cpp, cuda, triton; chosen by gls.ops):
  element i of member m, seed s (an unsigned 64-bit int), purpose q:
  block b = i // 4, lane i % 4 of
  philox4x32_10(counter = (b & 0xffffffff, b >> 32, m, q), key = (s & 0xffffffff, s >> 32));
  uniform u = ((x >> 8) + 0.5) * 2^-24 evaluated in float32, in (0, 1] (never 0, so the log is finite;
  for x >> 8 >= 2^23 the +0.5 rounds to even, and x >> 8 = 2^24 - 1 gives exactly 1.0, i.e. r = 0);
  Box-Muller on lanes (0, 1) and (2, 3): r = sqrt(-2 ln u_even), n_even = r cos(2pi u_odd),
  n_odd = r sin(2pi u_odd), in float32 (2pi rounded to float32).
The u32 words are bit-identical on every backend, the normals agree within NORMAL_ATOL (the backends'
float32 log / cos / sin differ by a few ulps; |n| <= 5.9 always). Results do not depend on the thread
count. `purpose` separates independent streams (0 = PGPE/RGS population noise).

Populations: P rows for members member_offset .. member_offset + P - 1; with `antithetic`, rows p and
p + P/2 are +eps and -eps of pair index member_offset + p (the counter's member word). A sub-range of a
population is asked for with member_offset. Sigma checks (finite, non-negative) read the values, which
synchronises with a GPU. theta and the weights are float32 or float64, the dtypes of the kernels.
"""
from __future__ import annotations

import numbers
import operator

import torch
from torch import Tensor

from gls import ops
from gls.meta._noise import check_philox, check_sigma

NORMAL_ATOL = 1e-5  # cross-backend agreement of the float32 normals (absolute; |n| < 6)
PURPOSE_POPULATION = 0  # purpose word of the PGPE/RGS population noise
_U32 = 1 << 32
_U64 = 1 << 64


def _int(value, name: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None


def _seed(seed) -> int:
    """The unsigned 64-bit seed as the signed int64 the torch op schemas carry."""
    seed = _int(seed, "seed")
    if not 0 <= seed < _U64:
        raise ValueError(f"seed must be an unsigned 64-bit int (0 <= seed < 2**64), got {seed}")
    return seed - _U64 if seed >= 1 << 63 else seed


def _u32(value, name: str) -> int:
    value = _int(value, name)
    if not 0 <= value < _U32:
        raise ValueError(f"{name} must be a 32-bit word (0 <= {name} < 2**32), got {value}")
    return value


def _dim(d) -> int:
    d = _int(d, "d")
    if d < 1:
        raise ValueError(f"the number of weights d must be >= 1, got {d}")
    if d >= 1 << 63:
        raise ValueError(f"the number of weights d must be < 2**63 (the ops take it as an int64), got {d}")
    return d


def _members(P, member_offset, antithetic: bool, device) -> Tensor:
    """int64 member words of a population of P rows (P/2 pair indices with antithetic)."""
    P = _int(P, "the population size P")
    if P < 1:
        raise ValueError(f"the population size P must be >= 1, got {P}")
    if antithetic and P % 2:
        raise ValueError(f"antithetic sampling needs an even population size P (pairs p, p + P/2), got P = {P}")
    n = P // 2 if antithetic else P
    offset = _u32(member_offset, "member_offset")
    if offset + n > _U32:
        raise ValueError(f"member words member_offset .. member_offset + {n - 1} exceed 2**32 - 1 (member_offset = {offset})")
    return torch.arange(offset, offset + n, dtype=torch.int64, device=device)


def _floating(t: Tensor, what: str) -> Tensor:
    """t, if float32 or float64: the dtypes every backend's kernels take."""
    if t.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{what} must be float32 or float64 (the dtypes of the noise kernels), got {t.dtype}")
    return t


def _sigma(sigma, d: int, like: Tensor) -> Tensor:
    """sigma as a tensor of like's dtype and device: a scalar or (d,); finite and non-negative."""
    if isinstance(sigma, Tensor):
        if sigma.dtype == torch.bool or sigma.is_complex():
            raise TypeError(f"sigma must be a real tensor, got {sigma.dtype}")
        s = sigma
    elif isinstance(sigma, numbers.Real) and not isinstance(sigma, bool):
        s = torch.tensor(float(sigma))
    else:
        raise TypeError(f"sigma must be a float or a tensor, got {type(sigma).__name__} {sigma!r:.40}")
    s = s.to(dtype=like.dtype, device=like.device)
    check_sigma(s, d, "noise")
    if not bool(((s.detach() >= 0) & torch.isfinite(s.detach())).all()):  # one sync
        raise ValueError("sigma must be finite and non-negative (no NaN or inf)")
    return s.reshape(()) if s.numel() == 1 else s


def philox4x32_10(counter: Tensor, key: Tensor, *, backend: str | None = None) -> Tensor:
    """Raw Philox4x32-10 block function: counter (..., 4), key (..., 2) int64 tensors of u32 words -> (..., 4).

    Leading dimensions broadcast; every word must lie in [0, 2^32).
    """
    if not isinstance(counter, Tensor) or not isinstance(key, Tensor) or counter.dtype != torch.int64 or key.dtype != torch.int64:
        raise TypeError("philox4x32_10: counter and key must be int64 tensors holding u32 words")
    check_philox(counter, key)
    for name, t in (("counter", counter), ("key", key)):
        if t.numel() and not bool(((t >= 0) & (t < _U32)).all()):
            raise ValueError(f"philox4x32_10: every {name} word must be in [0, 2**32)")
    lead = torch.broadcast_shapes(counter.shape[:-1], key.shape[:-1])
    counter = counter.expand(*lead, 4).contiguous()
    key = key.expand(*lead, 2).contiguous()
    return ops.philox4x32_10(counter, key, backend=backend)


def normal(n, *, seed, member, purpose=PURPOSE_POPULATION, device=None, backend: str | None = None) -> Tensor:
    """The first n float32 normals of member `member`'s stream -> (n,)."""
    members = torch.tensor([_u32(member, "member")], dtype=torch.int64, device=device)
    out = ops.noise_normal(members, _dim(n), _seed(seed), _u32(purpose, "purpose"), False, backend=backend)
    return out.reshape(-1)


def population_normal(P, d, *, seed, purpose=PURPOSE_POPULATION, member_offset=0, antithetic=False, device=None,
                      backend: str | None = None) -> Tensor:
    """(P, d) float32 noise of a population, written directly (row p = eps of member member_offset + p;
    with antithetic, rows p + P/2 = -eps of pair p)."""
    members = _members(P, member_offset, antithetic, device)
    return ops.noise_normal(members, _dim(d), _seed(seed), _u32(purpose, "purpose"), bool(antithetic), backend=backend)


def perturb(theta: Tensor, sigma, seed, members, *, purpose=PURPOSE_POPULATION, member_offset=0, antithetic=False,
            backend: str | None = None) -> Tensor:
    """(P, d) perturbed parameters theta + sigma * eps_p for the P = `members` population rows.

    theta: flat (d,) floating tensor; sigma: float, scalar tensor or (d,) tensor, >= 0. Gradients flow
    to theta (row sum) and sigma (sum_p grad_p * eps_p, noise regenerated).
    """
    if not isinstance(theta, Tensor) or theta.dim() != 1 or not theta.is_floating_point():
        raise TypeError("perturb: theta must be a flat (d,) floating-point tensor")
    _floating(theta, "perturb: theta")
    d = _dim(theta.shape[0])
    member_words = _members(members, member_offset, antithetic, theta.device)
    return ops.noise_perturb(theta, _sigma(sigma, d, theta), member_words, _seed(seed), _u32(purpose, "purpose"), bool(antithetic),
                             backend=backend)


def _weights(weights: Tensor, P_name: str) -> Tensor:
    if not isinstance(weights, Tensor) or weights.dim() not in (1, 2) or not weights.is_floating_point():
        raise TypeError(f"{P_name}: weights must be a (P,) or (P, d) floating-point tensor")
    return _floating(weights, f"{P_name}: weights")


def noise_weighted_sum(weights: Tensor, sigma, seed, d, *, purpose=PURPOSE_POPULATION, member_offset=0, antithetic=False,
                       backend: str | None = None) -> Tensor:
    """(d,) sum_p weights_p * sigma * eps_p over the P = len(weights) population rows: the PGPE centre
    gradient (up to its 1/n), eps regenerated on the fly so memory stays O(d)."""
    weights = _weights(weights, "noise_weighted_sum")
    d = _dim(d)
    members = _members(weights.shape[0], member_offset, antithetic, weights.device)
    return ops.noise_weighted_sum(weights, _sigma(sigma, d, weights), members, d, _seed(seed), _u32(purpose, "purpose"),
                                  bool(antithetic), backend=backend)


def noise_sigma_weighted_sum(weights: Tensor, sigma, seed, d, *, purpose=PURPOSE_POPULATION, member_offset=0, antithetic=False,
                             backend: str | None = None) -> Tensor:
    """(d,) sum_p weights_p * ((sigma eps_p)^2 - sigma^2) / sigma: the PGPE stdev gradient reduction,
    computed as sigma * (eps_p^2 - 1) (equal for sigma > 0, and 0 at sigma = 0); O(d) memory."""
    weights = _weights(weights, "noise_sigma_weighted_sum")
    d = _dim(d)
    members = _members(weights.shape[0], member_offset, antithetic, weights.device)
    return ops.noise_sigma_weighted_sum(weights, _sigma(sigma, d, weights), members, d, _seed(seed), _u32(purpose, "purpose"),
                                        bool(antithetic), backend=backend)
