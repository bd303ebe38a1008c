"""Sound bounds: gls.compute_bounds(..., sound=True), true bounds of the real-valued network despite rounding.

The network is the one whose parameters, buffers, x, eps and spec are the given floating-point numbers
read as real numbers. Everything is evaluated in float64 with plain PyTorch (matmul, conv2d,
conv_transpose2d, elementwise ops; cuDNN is switched off so no Winograd/FFT algorithm runs), and
every quantity that carries a bound is corrected by a rigorous a-priori allowance for its rounding.

The argument. u = 2^-53 (float64 unit roundoff), gamma_n = n u / (1 - n u), N = the largest
dimension of any layer, input or specification, G = gamma_{N+2}. Standard results (Higham, Accuracy
and Stability of Numerical Algorithms, section 3.1): a correctly rounded op has relative error <= u;
a dot product of n terms computed in any order (with or without FMA) has |fl(sum) - sum| <= gamma_n
sum |terms|; a sum of non-negative numbers is computed with relative error <= gamma_n. Terms that are
exactly zero (padding, zero coefficients) add no rounding, so n <= N for every dot product here,
convolutions and their transposes included (a sum has at most as many non-zero terms as the vector
it reads). Hence:

1. Input box: lo = x - eps and hi = x + eps are rounded, then moved one float outward (nextafter),
   then clipped to the domain (exact): the real region lies inside [lo, hi].
2. Interval step through z = W h + b with h in [l, u], m = max(|l|, |u|): the box is written as
   mid = fl((l + u) / 2) and rad = fl((u - l) / 2) + 4 u m, which holds [l, u] (mid and the half-width
   are each within u m of their real values). c = fl(W mid + b), r = fl(|W| rad), q = fl(|W| m + |b|).
   |c - (W mid + b)| <= G q, |r - |W| rad| <= G |W| rad <= 1.01 G q, and forming c -+ r adds at most
   2.1 u q <= 2.1 G q; the computed q is at least (1 - G) times the real one, so e = 6 G q covers the
   sum (<= 4.2 G q) and [c - r - e, c + r + e], moved one float outward, holds W h + b. (Forming rad
   rounds too, but 4 u m leaves room for it.) Elementwise maps (Normalize, BatchNorm kept unfolded)
   are exact per element but for two roundings, plus Diag.err, the bound on the rounding of their
   computed scale and shift (net.plan(sound=True)).
3. ReLU relaxation lines are made valid in real arithmetic for the (rigorous) [l, u] they get: the
   lower lines (slope 0 or 1, offset 0), the box line y <= u and the stable cases are exact; for the
   triangle, with s = fl(u / (u - l)), the offset is c = max(up(-s l), up(u - down(s u))) (up/down:
   one float outward), so s z + c >= relu(z) at z = l and z = u, hence on all of [l, u] (convexity).
   A non-finite slope falls back to the box line.
4. Back-substitution keeps the invariant  spec(x) >= lam . v(x) + bias - err  in real arithmetic for
   every x in the region, with lam, bias the computed coefficients and err >= 0 the allowance. An
   affine step computes g = fl(lam W) and beta = fl(lam . b); the real identity
   lam . (W w + b) = g . w + beta + (lam W - g) . w + (lam . b - beta) has remainder >= -G |lam| . q
   (q as in 2, from the interval pass, since |w| <= m), so err += 2 G |lam| . q. A ReLU step uses
   the real inequality lam . relu(z) >= sum (lam a) z + lam . c (valid lines, z in [l, u]) and pays
   2 u |g| . m for g = fl(lam a) (one rounding per product) and 2 G |lam| . |c| for the sum. Adding a
   step's constant to bias pays 2 u |bias|.
5. Concretisation: min over the box of g . x + bias is computed as a dot product of <= N + 1 terms,
   paying 2 G (|g| . m + |bias|); the allowance err is subtracted and the result moved one float
   down. err is a sum of non-negative terms, each with a factor 2 of slack, so rounding while
   accumulating it (relative error <= gamma_K for K terms, far below 1/2) cannot under-count it.
   NaN (from inf - inf after an overflow) becomes -inf.
6. Intermediate bounds are IBP (2) or back-substituted (4, 5) and intersected by max/min: each is
   rigorous, so both are. Upper bounds are minus the sound lower bound of -C. The float64 result is
   rounded down to the caller's dtype (one float down where the cast rounded up).

So every lower bound returned is <= the true minimum of C z over the region (every upper bound >= the
maximum). The methods are gls.bounds's; their numbers differ from the default mode's by the
allowances (about 1e-7 relative after the rounding to float32), and IBP folds C through the last
Linear/Conv together with any elementwise maps after it. Cost: float64, an extra |W| pass per
interval step and a few elementwise passes per back-substitution step; bench/test_sound_bench.py
measured 2.5-10x the default float32 time on the MLP and CNN3 (CPU, one thread). No gradients:
sound mode is for certification. The backend kernels of gls.ops are not used.
"""
from __future__ import annotations

import torch

from gls.affine import Dense, Diag
from gls.problem import Bounds, count_maps, domain_bounds, input_region, member_chunk_size, spec_matrix

_U = 2.0 ** -53
_INF = float("inf")


def _gamma(n: int) -> float:
    return n * _U / (1 - n * _U)


def _down(t: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(t, t.new_tensor(-_INF))


def _up(t: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(t, t.new_tensor(_INF))


def _interval(op, l, u, G):
    """Rigorous interval step: (l, u) of the op's output and q = |W| m + |b| (point 2)."""
    m = torch.maximum(l.abs(), u.abs())
    if isinstance(op, Diag):
        s, t = op.s.unsqueeze(1), op.t.unsqueeze(1)
        lo = torch.where(s >= 0, l * s, u * s) + t
        hi = torch.where(s >= 0, u * s, l * s) + t
        q = m * s.abs() + t.abs()
        e = 2 * G * q
        if op.err is not None:
            e = e + 2 * (m * op.err[0].unsqueeze(1) + op.err[1].unsqueeze(1))
        return _down(lo - e), _up(hi + e), q
    mid = (l + u) / 2
    rad = (u - l) / 2 + 4 * _U * m  # [mid - rad, mid + rad] holds [l, u] despite the rounding of both
    rows = mid.shape[1]
    c = op.apply(mid, op.W, op.b)
    both = op.apply(torch.cat([rad, m], dim=1), op.W.abs(), None)  # |W| rad and |W| m in one pass
    r, q = both[:, :rows], both[:, rows:]
    if op.b is not None:
        b = op.b.abs() if isinstance(op, Dense) else op.b.abs().repeat_interleave(op.n_out // op.W.shape[1], dim=1)
        q = q + b.unsqueeze(-2)
    e = 6 * G * q
    return _down(c - r - e), _up(c + r + e), q


def _lines(l, u, method):
    """ReLU lines valid in real arithmetic on [l, u] (point 3): (a_l, c_l, a_u, c_u)."""
    active, unstable = l >= 0, (l < 0) & (u > 0)
    act = active.to(l.dtype)
    zero = torch.zeros_like(l)
    if method in ("ibp", "hbox"):
        return act, zero, act, torch.where(unstable, u, zero)
    slope = u / (u - l)
    ok = unstable & torch.isfinite(slope) & torch.isfinite(l)
    slope = torch.where(ok, slope, zero)
    c = torch.maximum(_up(-slope * l), _up(u - _down(slope * u)))
    a_u = torch.where(ok, slope, torch.where(unstable, zero, act))
    c_u = torch.where(ok, c, torch.where(unstable, u, zero))
    a_l = torch.where(unstable, (u > -l).to(l.dtype), act)
    return a_l, zero, a_u, c_u


class _Pass:
    """One population pass: the plan, the rigorous interval boxes and the back-substitution."""

    def __init__(self, segs, lo, hi, P, G):
        self.segs, self.G, self.P = segs, G, P
        self.x_lo, self.x_hi = lo, hi
        self.q = []  # q[j][i]: |W| m + |b| of op i of segs[j]
        self.m_in = []  # m_in[j][i]: bound on |input| of op i of segs[j]
        self.box_in = []  # rigorous box of the input of every op of the last segment (IBP's final step)
        self.pre = []  # rigorous (l, u) of every ReLU's pre-activation (IBP until refined)
        l, u = lo.unsqueeze(0), hi.unsqueeze(0)
        for j, seg in enumerate(segs):
            qs, ms = [], []
            for op in seg:
                ms.append(torch.maximum(l.abs(), u.abs()))
                if j == len(segs) - 1:
                    self.box_in.append((l, u))
                l, u, q = _interval(op, l, u, G)
                qs.append(q)
            self.q.append(qs)
            self.m_in.append(ms)
            if j < len(segs) - 1:
                self.pre.append((l.expand(P, *l.shape[1:]), u.expand(P, *u.shape[1:])))
                l, u = l.clamp(min=0), u.clamp(min=0)
        self.relax = []

    @classmethod
    def of(cls, segs, lo, hi, P, rows):
        """A pass whose rounding allowance covers its longest dot product (the input, `rows` specification
        rows, every op's widths)."""
        dims = [lo.shape[-1], rows] + [d for seg in segs for op in seg for d in (op.n_in, op.n_out)]
        return cls(segs, lo, hi, P, _gamma(max(dims) + 2))

    def lower(self, lam, upto):
        """Sound lower bound of lam . (output of segs[upto]) over the input region."""
        G = self.G
        bias = lam.new_zeros(lam.shape[:3])
        err = torch.zeros_like(bias)
        for j in range(upto, -1, -1):
            for i in range(len(self.segs[j]) - 1, -1, -1):
                lam, bias, err = self._step(self.segs[j][i], self.q[j][i], self.m_in[j][i], lam, bias, err)
            if j > 0:
                a_l, c_l, a_u, c_u = self.relax[j - 1]
                l, u = self.pre[j - 1]
                pos = lam >= 0
                lc = lam * torch.where(pos, c_l.unsqueeze(2), c_u.unsqueeze(2))
                lam = lam * torch.where(pos, a_l.unsqueeze(2), a_u.unsqueeze(2))
                m = torch.maximum(l.abs(), u.abs()).unsqueeze(2)
                err = err + 2 * _U * (lam.abs() * m).sum(-1) + 2 * G * lc.abs().sum(-1)
                bias = bias + lc.sum(-1)
                err = err + 2 * _U * bias.abs()
        return self._concretize(lam, bias, err)

    def ibp_lower(self, lam):
        """IBP's final bound: C folded into the last Linear/Conv (with the BatchNorm that gls.bounds folds
        into it, kept as trailing Diags here), evaluated on the box of that map's input."""
        seg = self.segs[-1]
        first = len(seg) - 1
        while first > 0 and isinstance(seg[first], Diag):
            first -= 1
        bias = lam.new_zeros(lam.shape[:3])
        err = torch.zeros_like(bias)
        for i in range(len(seg) - 1, first - 1, -1):
            lam, bias, err = self._step(seg[i], self.q[-1][i], self.m_in[-1][i], lam, bias, err)
        return self._concretize(lam, bias, err, *self.box_in[first])

    def _step(self, op, q, m, lam, bias, err):
        """One affine back-substitution step with its allowance (point 4)."""
        err = err + 2 * self.G * (lam.abs() * q.unsqueeze(2)).sum(-1)
        if isinstance(op, Diag) and op.err is not None:
            err = err + 2 * (lam.abs() * (m * op.err[0].unsqueeze(1) + op.err[1].unsqueeze(1)).unsqueeze(2)).sum(-1)
        lam, beta = op.back(lam)
        bias = bias + beta
        return lam, bias, err + 2 * _U * bias.abs()

    def _concretize(self, lam, bias, err, lo=None, hi=None):
        if lo is None:
            lo, hi = self.x_lo.unsqueeze(0), self.x_hi.unsqueeze(0)
        m = torch.maximum(lo.abs(), hi.abs())
        val = (lam.clamp(min=0) * lo.unsqueeze(2)).sum(-1) + (lam.clamp(max=0) * hi.unsqueeze(2)).sum(-1)
        r = val + bias
        err = err + 2 * self.G * ((lam.abs() * m.unsqueeze(2)).sum(-1) + bias.abs()) + 2 * _U * r.abs()
        out = _down(r - err)
        return torch.where(torch.isnan(out), out.new_tensor(-_INF), out)


_CHUNK_ELEMENTS = 1 << 24  # float64 coefficients per back-substituted block of rows


def _refine(ps: _Pass, k: int, method: str, intersect_ibp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Sound back-substituted bounds of ReLU k's pre-activation (rows unstable under IBP, or all)."""
    l, u = ps.pre[k]
    P, B, N = l.shape
    if intersect_ibp:
        idx = ((l < 0) & (u > 0)).reshape(P * B, N).any(0).nonzero().squeeze(1)
    else:
        idx = torch.arange(N, device=l.device)
    n = idx.numel()
    if n == 0:
        return l, u
    rows = torch.zeros(n, N, dtype=l.dtype, device=l.device)
    rows[torch.arange(n, device=l.device), idx] = 1
    rows = torch.cat([rows, -rows])
    widest = max([ps.x_lo.shape[-1]] + [op.n_in for seg in ps.segs[:k + 1] for op in seg])
    chunk = max(1, _CHUNK_ELEMENTS // (P * B * widest))
    res = torch.cat([ps.lower(r.expand(P, B, *r.shape).contiguous(), k) for r in rows.split(chunk)], dim=-1)
    l_bs, u_bs = res[..., :n], -res[..., n:]
    if intersect_ibp:
        l_bs, u_bs = torch.maximum(l.index_select(-1, idx), l_bs), torch.minimum(u.index_select(-1, idx), u_bs)
    return l.index_copy(-1, idx, l_bs), u.index_copy(-1, idx, u_bs)


def _relax_layers(ps: _Pass, method: str, intersect_ibp: bool) -> None:
    """Every ReLU layer's rigorous bounds in ps.pre (refined for hbox/deeppoly, but not the first layer
    when one Linear/Conv precedes it) and its lines in ps.relax."""
    for k in range(len(ps.segs) - 1):
        if method in ("hbox", "deeppoly") and (k > 0 or count_maps(ps.segs[0]) > 1):
            ps.pre[k] = _refine(ps, k, method, intersect_ibp)
        ps.relax.append(_lines(*ps.pre[k], method))


def _region(x: torch.Tensor, eps, domain) -> tuple[torch.Tensor, torch.Tensor]:
    """The input box in float64, every bound moved one float outward before clipping (point 1)."""
    input_region(x, eps, domain)  # the checks
    B = x.shape[0]
    if isinstance(eps, torch.Tensor):
        e = eps.to(device=x.device, dtype=torch.float64).reshape(-1).expand(B)
    else:
        e = torch.full((B,), float(eps), dtype=torch.float64, device=x.device)
    flat, e = x.reshape(B, -1), e.unsqueeze(1)
    lo, hi = _down(flat - e), _up(flat + e)
    if domain is not None:
        d_lo, d_hi = domain_bounds(domain)
        lo, hi = lo.clamp(min=d_lo), hi.clamp(max=d_hi)
    return lo, hi


def _to_dtype_down(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float64 -> dtype, rounded down."""
    c = t.to(dtype)
    return torch.where(c.double() > t, torch.nextafter(c, c.new_tensor(-_INF)), c)


def sound_bounds(net, params: dict, x: torch.Tensor, eps, *, method: str, labels, spec, domain, bound: str,
                 member_chunk, intersect_ibp: bool):
    """compute_bounds(..., sound=True); net and params are already validated, x checked. See the module
    docstring for the argument; the definitions of the methods are gls.bounds's."""
    dtype = x.dtype
    P = next(iter(params.values())).shape[0] if params else 1
    chunk = member_chunk_size(member_chunk, P, x.shape[0], x.device, method)
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
        x64 = x.detach().double()
        lo, hi = _region(x64, eps, domain)
        parts = []
        for start in range(0, P, chunk):
            p64 = {n: t[start:start + chunk].detach().double() for n, t in params.items()}
            segs = net.plan(p64, x.shape[1:], torch.float64, sound=True)
            Pc = next(iter(p64.values())).shape[0] if p64 else 1
            B, K = x.shape[0], segs[-1][-1].n_out
            C = spec_matrix(labels, spec, B, K, x64)
            S = C.shape[1]
            if bound == "both":
                C = torch.cat([C, -C], dim=1)
            ps = _Pass.of(segs, lo, hi, Pc, C.shape[1])
            lam = C.unsqueeze(0).expand(Pc, *C.shape).contiguous()
            last = len(segs) - 1
            if method == "ibp":
                lb = ps.ibp_lower(lam)
            else:
                _relax_layers(ps, method, intersect_ibp)
                lb = ps.lower(lam, last)
            parts.append(lb)
        lb = _to_dtype_down(torch.cat(parts), dtype)
    if bound == "lower":
        return Bounds(lb, None)
    return Bounds(lb[..., :S], -lb[..., S:])


def deeppoly_lower_with_slopes(net, params: dict, x: torch.Tensor, eps, C: torch.Tensor, *, domain, intersect_ibp: bool,
                               slopes: list) -> torch.Tensor:
    """Sound lower bound (P, B, S) of C z by DeepPoly whose unstable ReLUs take the lower line slopes[k] z
    (slopes[k] (P, B, S, N_k), values in [0, 1], one per specification row: alpha-CROWN, gls.alpha_crown).

    Such a line is valid in real arithmetic for every z, and point 4 pays for the rounding of the products
    whatever the slope, so the argument above holds unchanged. Every (sample, row) becomes a sample of its
    own with one row, so the per-(member, sample, neuron) lines of _Pass carry per-row slopes; the
    intermediate bounds are this module's DeepPoly bounds, computed once per sample and repeated per row.
    net and params validated, x checked, C (B, S, K)."""
    B, S, K = C.shape
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
        lo, hi = _region(x.detach().double(), eps, domain)
        p64 = {n: t.detach().double() for n, t in params.items()}
        segs = net.plan(p64, x.shape[1:], torch.float64, sound=True)
        P = next(iter(p64.values())).shape[0] if p64 else 1
        ps = _Pass.of(segs, lo, hi, P, S)
        last = len(segs) - 1
        _relax_layers(ps, "deeppoly", intersect_ibp)

        def rows(t, dim):  # (.., B, ..) -> (.., B * S, ..): each sample once per row
            return t.repeat_interleave(S, dim=dim)

        ps.x_lo, ps.x_hi = rows(lo, 0), rows(hi, 0)
        ps.q = [[rows(q, 1) for q in qs] for qs in ps.q]
        ps.m_in = [[rows(m, 1) for m in ms] for ms in ps.m_in]
        relax = []
        for (l, u), (a_l, c_l, a_u, c_u), a in zip(ps.pre, ps.relax, slopes):
            a = a.detach().double().clamp(0.0, 1.0).reshape(P, B * S, -1)
            relax.append((torch.where(rows((l < 0) & (u > 0), 1), a, rows(a_l, 1)), rows(c_l, 1), rows(a_u, 1), rows(c_u, 1)))
        ps.pre = [(rows(l, 1), rows(u, 1)) for l, u in ps.pre]
        ps.relax = relax
        lam = C.double().reshape(1, B * S, 1, K).expand(P, -1, -1, -1).contiguous()
        return _to_dtype_down(ps.lower(lam, last).reshape(P, B, S), x.dtype)
