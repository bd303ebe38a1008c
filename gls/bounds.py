"""Population-batched IBP, hBox, CROWN-IBP and DeepPoly bounds (docs/design.md §3) on top of gls.ops.

Every member p of a population (params {name: (P, *shape)}) is bounded in the same pass; the inputs
are shared. Definitions, per method:

* intermediate bounds (pre-activations of each ReLU): ``ibp`` and ``crown-ibp`` use interval
  arithmetic (IBP); ``hbox`` and ``deeppoly`` back-substitute from that layer to the input with their
  own relaxation of the earlier ReLUs and intersect with IBP. Only rows of neurons unstable under
  IBP (union over members and samples) are back-substituted; the others keep their IBP bounds. This
  equals the all-rows computation: a neuron stable under IBP is stable under the tighter bounds too,
  with the same exact relaxation, and the IBP used for the intersection is plain IBP from the input
  box, so it never depends on the refined bounds. The first layer is not refined when its affine
  part has at most one Linear/Conv: IBP is then already the exact range of an affine map on a box.
* the final bound: ``crown-ibp``, ``hbox`` and ``deeppoly`` back-substitute the specification C
  (rows of C, and of -C for upper bounds, in one pass) to the input box; ``ibp`` folds C into the
  last affine layer (W' = C W, b' = C b, the usual elision of the last layer) and evaluates it on the
  IBP box of that layer's input. No intersection at the output.

Inputs are in pixel space: the region is [max(x - eps, lo), min(x + eps, hi)] for domain = (lo, hi)
(None: no clipping); Normalize is a layer of the network and is back-substituted through.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from gls import ops
from gls.affine import Dense, Diag, relax_step
from gls.net import Network, _dtype, check_input

METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly")
_ALIASES = {"crown": "deeppoly"}


class Bounds(NamedTuple):
    """lower and upper (None unless bound="both") bounds of C z, each (P, B, S)."""

    lower: torch.Tensor
    upper: torch.Tensor | None


def margin_spec(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """C (B, K-1, K) with rows e_y - e_j for j != y in increasing j: C z = margins z_y - z_j."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be a 1-D integer tensor (B,), got {labels!r:.80}")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{labels.min()}, {labels.max()}]")
    eye = torch.eye(num_classes, device=labels.device)
    j = torch.arange(num_classes - 1, device=labels.device)
    others = j + (j.unsqueeze(0) >= labels.unsqueeze(1)).long()  # (B, K-1): every class but y
    return eye[labels].unsqueeze(1) - eye[others]


def _method(method) -> str:
    name = _ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS + tuple(_ALIASES)}")
    return name


def input_region(x: torch.Tensor, eps, domain) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat box (B, N) [max(x - eps, lo), min(x + eps, hi)]; eps a float or a (B,) tensor."""
    B = x.shape[0]
    if isinstance(eps, torch.Tensor):
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
        try:
            eps = float(eps)
        except (TypeError, ValueError):
            raise TypeError(f"eps must be a float or a (B,) tensor, got {type(eps).__name__}") from None
        if eps != eps or eps < 0:
            raise ValueError(f"eps must be non-negative, got {eps}")
        eps = torch.full((B,), eps, dtype=x.dtype, device=x.device)
    flat, eps = x.reshape(B, -1), eps.unsqueeze(1)
    lo, hi = flat - eps, flat + eps
    if domain is not None:
        d_lo, d_hi = (float(v) for v in domain)
        if not d_lo <= d_hi:
            raise ValueError(f"domain must be (lo, hi) with lo <= hi, got {domain}")
        lo, hi = lo.clamp(min=d_lo), hi.clamp(max=d_hi)
        if (lo > hi).any():
            raise ValueError(f"x lies outside the domain {tuple(domain)} by more than eps")
    return lo, hi


def _spec(labels, spec, B: int, K: int, like: torch.Tensor) -> torch.Tensor:
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
    if torch.isnan(spec).any():
        raise ValueError("spec contains NaN")
    return spec.to(like.dtype)


def _full(t: torch.Tensor, P: int) -> torch.Tensor:
    return t.expand(P, *t.shape[1:]) if t.shape[0] != P else t


def _interval(seg, mid, rad, backend):
    for op in seg:
        mid, rad = op.ibp(mid, rad, backend)
    return mid, rad


def _ibp(segs, x_lo, x_hi, P, backend):
    """IBP boxes of every ReLU's pre-activation, and the box of the last affine layer's input."""
    mid, rad = ((x_hi + x_lo) / 2).unsqueeze(0), ((x_hi - x_lo) / 2).unsqueeze(0)
    boxes = []
    for seg in segs[:-1]:
        mid, rad = _interval(seg, mid, rad, backend)
        l, u = _full(mid - rad, P), _full(mid + rad, P)
        boxes.append((l, u))
        l, u = l.relu(), u.relu()
        mid, rad = (u + l) / 2, (u - l) / 2
    mid, rad = _interval(segs[-1][:-1], mid, rad, backend)
    return boxes, (_full(mid - rad, P), _full(mid + rad, P))


def _through(seg, lam):
    bias = lam.new_zeros(lam.shape[:3])
    for op in reversed(seg):
        lam, b = op.back(lam)
        bias = bias + b
    return lam, bias


def _backsub(lam, segs, relax, upto, x_lo, x_hi, backend):
    """Lower bound of lam . z over the input box, z the output of segs[upto] (back-substitution)."""
    bias = lam.new_zeros(lam.shape[:3])
    for j in range(upto, -1, -1):
        seg = segs[j]
        if j == 0:
            lam, b = _through(seg, lam)
        elif len(seg) == 1 and isinstance(seg[0], Dense):  # fused Linear + ReLU step
            lam, b = ops.backsub_linear_relu(lam, seg[0].W, seg[0].b, *relax[j - 1], backend=backend)
        else:
            lam, b = _through(seg, lam)
            lam, b2 = relax_step(lam, *relax[j - 1])
            b = b + b2
        bias = bias + b
    return ops.concretize(lam, bias, x_lo, x_hi, backend=backend)


_CHUNK_ELEMENTS = 1 << 25  # at most this many coefficients per back-substituted block of rows


def _refine(segs, relax, k, l, u, x_lo, x_hi, backend, all_rows):
    """Intersect the IBP box of segs[k]'s output with back-substituted bounds (unstable rows only).

    Rows are independent, so they go in chunks that keep each coefficient tensor (P, B, rows, N)
    under _CHUNK_ELEMENTS whatever the layer width; the numbers do not depend on the chunking.
    """
    P, B, N = l.shape
    if all_rows:
        idx = torch.arange(N, device=l.device)
    else:
        idx = ((l < 0) & (u > 0)).reshape(P * B, N).any(0).nonzero().squeeze(1)
    n = idx.numel()
    if n == 0:
        return l, u
    rows = torch.zeros(n, N, dtype=l.dtype, device=l.device)
    rows[torch.arange(n, device=l.device), idx] = 1
    rows = torch.cat([rows, -rows])
    widest = max([x_lo.shape[-1]] + [op.n_in for seg in segs[:k + 1] for op in seg])
    chunk = max(1, _CHUNK_ELEMENTS // (P * B * widest))
    res = torch.cat([_backsub(r.expand(P, B, *r.shape).contiguous(), segs, relax, k, x_lo, x_hi, backend)
                     for r in rows.split(chunk)], dim=-1)
    l = l.index_copy(-1, idx, torch.maximum(l.index_select(-1, idx), res[..., :n]))
    u = u.index_copy(-1, idx, torch.minimum(u.index_select(-1, idx), -res[..., n:]))
    return l, u


def _count_maps(seg) -> int:
    return sum(not isinstance(op, Diag) for op in seg)  # Dense/Conv; Diag ops are exact on boxes


_CPU_ROWS_PER_CHUNK = 1024  # members x samples per pass on a CPU: past this the pass leaves the cache


def _member_chunk(member_chunk, P: int, B: int, device: torch.device) -> int:
    """Members bounded per pass: `member_chunk`, else all on a GPU and ~1024 / B on a CPU."""
    if member_chunk is None:
        return P if device.type != "cpu" else max(1, _CPU_ROWS_PER_CHUNK // max(B, 1))
    if isinstance(member_chunk, bool) or not isinstance(member_chunk, int) or member_chunk < 1:
        raise ValueError(f"member_chunk must be a positive int or None, got {member_chunk!r}")
    return member_chunk


def compute_bounds(model, x, eps, *, method, labels=None, spec=None, params=None, domain=(0.0, 1.0),
                   bound="lower", backend=None, member_chunk=None, _all_rows=False) -> Bounds:
    """Bounds of C z(x) over the input region for every member of a population.

    model: an nn.Sequential (see gls.net) or a gls.Network. x (B, ...) shared inputs; eps a float or
    (B,) tensor; domain (lo, hi) or None. method: ibp | hbox | crown-ibp | deeppoly (alias crown).
    labels (B,) -> C = margin_spec (S = K-1); spec (B, S, K) -> C; neither -> C = I (the logits).
    params {name: (P, *shape)} (torch.func.stack_module_state format) or None for the model's own
    (P = 1). bound "lower" or "both". backend is passed to every gls.ops call. Differentiable with
    respect to params. Returns Bounds(lower, upper), each (P, B, S).

    member_chunk: members bounded per batched pass (members are independent, so the numbers do not
    depend on it; the union of unstable rows is taken per pass). None: the whole population on a
    GPU; on a CPU about 1024 / B members per pass, where the benchmarks showed larger passes falling
    out of cache and losing to smaller ones (bench/results).
    """
    net = Network.from_module(model)
    method = _method(method)
    if bound not in ("lower", "both"):
        raise ValueError(f"bound must be 'lower' or 'both', got {bound!r}")
    params, P = net.resolve_params(params)
    x = check_input(x, _dtype(params, x))
    chunk = _member_chunk(member_chunk, P, x.shape[0], x.device)
    if chunk < P:
        parts = [compute_bounds(net, x, eps, method=method, labels=labels, spec=spec, domain=domain, bound=bound,
                                params={n: t[i:i + chunk] for n, t in params.items()}, backend=backend,
                                member_chunk=chunk, _all_rows=_all_rows) for i in range(0, P, chunk)]
        return Bounds(torch.cat([b.lower for b in parts]),
                      None if bound == "lower" else torch.cat([b.upper for b in parts]))
    x_lo, x_hi = input_region(x, eps, domain)
    segs = net.plan(params, x.shape[1:], x.dtype)
    B, K = x.shape[0], segs[-1][-1].n_out
    C = _spec(labels, spec, B, K, x)
    S = C.shape[1]
    if bound == "both":
        C = torch.cat([C, -C], dim=1)
    lam = C.unsqueeze(0).expand(P, *C.shape).contiguous()

    boxes, (l_last, u_last) = _ibp(segs, x_lo, x_hi, P, backend)
    if method == "ibp":
        lam, bias = segs[-1][-1].back(lam)  # C folded into the last affine layer
        S2, N = lam.shape[-2:]
        lb = ops.concretize(lam.reshape(1, P * B, S2, N), bias.reshape(1, P * B, S2),  # per-member boxes:
                            l_last.reshape(P * B, N), u_last.reshape(P * B, N),  # members ride the batch axis
                            backend=backend).reshape(P, B, S2)
    else:
        relax = []
        for k, (l, u) in enumerate(boxes):
            if method in ("hbox", "deeppoly") and (k > 0 or _count_maps(segs[0]) > 1):
                l, u = _refine(segs, relax, k, l, u, x_lo, x_hi, backend, _all_rows)
            relax.append(ops.relu_relax(l, u, method, backend=backend))
        lb = _backsub(lam, segs, relax, len(boxes), x_lo, x_hi, backend)
    if bound == "lower":
        return Bounds(lb, None)
    return Bounds(lb[..., :S], -lb[..., S:])
