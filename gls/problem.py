"""What a bound pass is asked for, shared by gls.bounds and gls.sound: the methods and their names, the
input region, the specification C, the result type, what "certified" means, which layers a method
refines, and how many members one pass bounds.
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import torch

from gls.affine import Diag

METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly")
_ALIASES = {"crown": "deeppoly"}


class Bounds(NamedTuple):
    """lower and upper (None unless bound="both") bounds of C z, each (P, B, S)."""

    lower: torch.Tensor
    upper: torch.Tensor | None


def margin_spec(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C (B, K-1, K) with rows e_y - e_j for j != y in increasing j: C z = margins z_y - z_j."""
    if (not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex()
            or labels.dtype == torch.bool):
        raise TypeError(f"labels must be a 1-D integer tensor (B,), got {labels!r:.80}")
    if labels.device.type == "meta":
        raise ValueError("labels is a meta tensor (no values)")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
    labels = labels.long()  # a uint8 index tensor would be read as a boolean mask
    eye = torch.eye(num_classes, device=labels.device)
    return eye[labels].unsqueeze(1) - eye[other_classes(labels, num_classes)]


def other_classes(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, K-1): every class but labels[b], increasing (the order of margin_spec's rows); labels (B,) long."""
    j = torch.arange(num_classes - 1, device=labels.device)
    return j + (j.unsqueeze(0) >= labels.unsqueeze(1)).long()


def certified(lower: torch.Tensor) -> torch.Tensor:
    """Which samples are certified, from the lower bounds (..., S) of their margin rows (margin_spec):
    every margin's lower bound > 0 (a NaN bound certifies nothing). Bool (...); the one definition used
    by the training loss's metrics, validation and evaluation."""
    return (lower > 0).all(-1)


def method_name(method) -> str:
    """The canonical name of a relaxation method (`crown` is `deeppoly`); a clear error for anything else."""
    if not isinstance(method, str):
        raise TypeError(f"method must be one string of {METHODS + tuple(_ALIASES)}, got {method!r}")
    name = _ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS + tuple(_ALIASES)}")
    return name


def method_names(methods) -> list[str]:
    """The canonical names of several methods (aliases resolved by method_name, repeats dropped, order
    kept); one ValueError naming every unknown one."""
    names, bad = [], []
    for m in methods:
        try:
            names.append(method_name(m))
        except (TypeError, ValueError):
            bad.append(str(m))
    if bad:
        raise ValueError(f"unknown relaxation(s) {', '.join(bad)}; expected some of {', '.join(METHODS + tuple(_ALIASES))}")
    return list(dict.fromkeys(names))


def input_region(x: torch.Tensor, eps, domain) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat box (B, N) [max(x - eps, lo), min(x + eps, hi)]; eps a float or a (B,) tensor."""
    B = x.shape[0]
    if isinstance(eps, torch.Tensor):
        if eps.dtype == torch.bool or eps.is_complex():
            raise TypeError(f"eps must be a real tensor, got {eps.dtype}")
        if eps.dim() == 0:
            eps = eps.reshape(1).expand(B)
        if eps.shape != (B,):
            raise ValueError(f"eps must be a float or a tensor of shape (B,) = ({B},), got {tuple(eps.shape)}")
        eps = eps.to(device=x.device, dtype=x.dtype)
        if torch.isnan(eps).any():
            raise ValueError("eps contains NaN")
        if (eps < 0).any():
            raise ValueError(f"eps must be non-negative, got min {eps.min().item()}")
    else:
        if not _is_number(eps):  # float("0.1") would take a string
            raise TypeError(f"eps must be a float or a (B,) tensor, got {type(eps).__name__} {eps!r:.40}")
        eps = float(eps)
        if eps != eps or eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        eps = torch.full((B,), eps, dtype=x.dtype, device=x.device)
    flat, eps = x.reshape(B, -1), eps.unsqueeze(1)
    lo, hi = flat - eps, flat + eps
    if domain is not None:
        d_lo, d_hi = domain_bounds(domain)
        lo, hi = lo.clamp(min=d_lo), hi.clamp(max=d_hi)
        if (lo > hi).any():
            raise ValueError(f"x lies outside the domain {tuple(domain)} by more than eps")
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("the input region is unbounded (infinite eps without a finite domain)")
    return lo, hi


def _is_number(v) -> bool:
    """A real number (Python, NumPy or a one-element tensor), not a string or a bool."""
    if isinstance(v, torch.Tensor):
        return v.numel() == 1 and not (v.dtype == torch.bool or v.is_complex())
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def domain_bounds(domain) -> tuple[float, float]:
    """(lo, hi) floats with lo <= hi; lo may be -inf and hi +inf."""
    try:
        d_lo, d_hi = domain
    except (TypeError, ValueError):
        d_lo = d_hi = None
    if not (_is_number(d_lo) and _is_number(d_hi)):  # float("0") would take a string
        raise TypeError(f"domain must be None or a pair (lo, hi) of numbers, got {domain!r}")
    d_lo, d_hi = float(d_lo), float(d_hi)
    if not d_lo <= d_hi or d_lo == float("inf") or d_hi == -float("inf"):
        raise ValueError(f"domain must be (lo, hi) with lo <= hi, got {domain}")
    return d_lo, d_hi


def spec_matrix(labels, spec, B: int, K: int, like: torch.Tensor) -> torch.Tensor:
    """C (B, S, K): margin_spec(labels), `spec` itself, or the identity (the logits)."""
    if labels is not None and spec is not None:
        raise ValueError("give labels or spec, not both")
    if labels is not None:
        if not isinstance(labels, torch.Tensor):
            raise TypeError(f"labels must be an integer tensor (B,), got {type(labels).__name__}")
        if labels.shape != (B,):
            raise ValueError(f"labels must have shape (B,) = ({B},), got {tuple(labels.shape)}")
        return margin_spec(labels.to(like.device), K).to(like.dtype)
    if spec is None:  # bounds of the logits themselves
        return torch.eye(K, dtype=like.dtype, device=like.device).expand(B, K, K)
    if not isinstance(spec, torch.Tensor) or not spec.is_floating_point():
        raise TypeError(f"spec must be a floating tensor (B, S, K), got {type(spec).__name__}")
    if spec.dim() != 3 or spec.shape[0] != B or spec.shape[2] != K:
        raise ValueError(f"spec must have shape (B, S, K) = ({B}, S, {K}), got {tuple(spec.shape)}")
    if not torch.isfinite(spec).all():
        raise ValueError("spec contains NaN or inf")
    return spec.to(like.dtype)


def count_maps(seg) -> int:
    """Linear/Conv maps in a segment: a first segment with one is exact under IBP and not refined."""
    return sum(not isinstance(op, Diag) for op in seg)  # Dense/Conv; Diag ops are exact on boxes


# members x samples per pass on a CPU. IBP / CROWN-IBP: past ~1024 the pass leaves the cache. hBox /
# DeepPoly: every (member, sample) of a pass back-substitutes as many rows as the most unstable one,
# so smaller passes pad less; measured on the trained cnn3 (bench/trained.py), DeepPoly, P = 64, B = 32,
# 2 threads: 4 members per pass 1.50 s, 2: 1.66 s, 8: 1.68 s; 1 thread: 4: 2.51 s, 32: 3.09 s.
# Without convolutions (no windowed rows, whose kernels gain from more members per call) batching
# members only pads: bench.workload's MLP, DeepPoly, B = 8, P = 16, 1 thread: 1 or 2 members per pass
# 119-122 ms, 4-16: 165-190 ms, the loop of single-member calls 148 ms.
CPU_ROWS_PER_PASS = {"ibp": 1024, "crown-ibp": 1024, "hbox": 128, "deeppoly": 128}
CPU_ROWS_PER_PASS_DENSE = {**CPU_ROWS_PER_PASS, "hbox": 16, "deeppoly": 16}


def member_chunk_size(member_chunk, P: int, B: int, device: torch.device, method: str, dense: bool = False) -> int:
    """Members bounded per pass: `member_chunk`, else all on a GPU and CPU_ROWS_PER_PASS / B on a CPU
    (CPU_ROWS_PER_PASS_DENSE for a network without convolutions: `dense`)."""
    if member_chunk is None:
        rows = (CPU_ROWS_PER_PASS_DENSE if dense else CPU_ROWS_PER_PASS)[method]
        return P if device.type != "cpu" else max(1, rows // max(B, 1))
    if isinstance(member_chunk, bool) or not isinstance(member_chunk, int) or member_chunk < 1:
        raise ValueError(f"member_chunk must be a positive int or None, got {member_chunk!r}")
    return member_chunk
