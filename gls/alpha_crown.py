"""alpha-CROWN: DeepPoly's final bound with every unstable ReLU's lower slope optimised (Xu et al., ICLR 2021).

A ReLU's lower line y >= a z is valid for every a in [0, 1], so each slope is a free variable: one per
(member, sample, specification row, neuron) of every ReLU, initialised at DeepPoly's choice (0 or 1)
and raised by Adam on the sum of the lower bounds. Rows, samples and members are independent, so that
sum's gradient is each row's own gradient and the whole population is optimised in one batched loop.
Intermediate bounds are DeepPoly's (gls.bounds), fixed. The best bound of every row over the iterations
is kept (the slopes are stored densely, (P, B, S, N) per ReLU, only the unstable ones used); the result
is the elementwise max with DeepPoly's own bound, so it is never looser. Defaults are auto_LiRPA 0.7.1's
(iterations 20, Adam lr 0.5, lr decay 0.98 per iteration, early stop after 10 iterations without gain).

The slopes enter the bound through torch.where, never a clamp: torch 2.14's clamp gives no gradient at
its bounds, where every slope starts (/work/shared/vendor/README.md). They are kept in [0, 1] by
clipping after each Adam step.

sound=True optimises in float32, then evaluates the chosen slopes with gls.sound's float64 back-
substitution and rounding allowance (its argument holds for any lower line a z with a in [0, 1]: the
line is valid in real arithmetic and the products' rounding is paid for), and takes the max with
DeepPoly's sound bound.
"""
from __future__ import annotations

import torch

from gls import ops
from gls.bounds import _refine, _through, compute_bounds, ibp_boxes
from gls.net import Network, check_input, param_dtype
from gls.problem import Bounds, count_maps, input_region, spec_matrix

NAME = "alpha-crown"


def alpha_crown_bounds(model, x, eps, *, labels=None, spec=None, params=None, domain=(0.0, 1.0), bound="lower",
                       backend=None, intersect_ibp=True, sound=False, iterations: int = 20, lr: float = 0.5,
                       lr_decay: float = 0.98, patience: int | None = 10) -> Bounds:
    """Bounds of C z(x) over the input region by alpha-CROWN; arguments as gls.compute_bounds, plus:

    iterations: bound evaluations (the first with DeepPoly's slopes), Adam steps between them;
    lr, lr_decay: Adam's learning rate, multiplied by lr_decay after every step;
    patience: stop when the summed best bound has not grown for this many iterations (None: never).
    Default mode: differentiable with respect to params, with the chosen slopes held fixed.
    """
    if not (isinstance(iterations, int) and iterations >= 1):
        raise ValueError(f"iterations must be a positive int, got {iterations!r}")
    if not (lr > 0 and 0 < lr_decay <= 1):
        raise ValueError(f"need lr > 0 and 0 < lr_decay <= 1, got lr={lr!r}, lr_decay={lr_decay!r}")
    if patience is not None and not (isinstance(patience, int) and patience >= 1):
        raise ValueError(f"patience must be a positive int or None, got {patience!r}")
    net = Network.from_module(model)
    params, P = net.resolve_params(params)
    x = check_input(x, param_dtype(params, x))
    deep = compute_bounds(net, x, eps, method="deeppoly", labels=labels, spec=spec, params=params, domain=domain,
                          bound=bound, backend=backend, intersect_ibp=intersect_ibp, sound=sound)
    B = x.shape[0]
    if sound:  # optimise in float32, evaluate soundly in float64
        work = {n: t.detach().float() for n, t in params.items()}
        xw = x.detach().float()
    else:
        work, xw = params, x
    setup = _Setup(net, work, xw, eps, labels, spec, domain, bound, backend, intersect_ibp)
    slopes, best = _optimise(setup, iterations, lr, lr_decay, patience)
    if sound:
        lb = _sound_lower(net, params, x, eps, setup.C, domain, intersect_ibp, slopes)
    else:
        lb = setup.lower(slopes)  # the kept slopes, fixed: differentiable in params
    lb_deep = deep.lower if bound == "lower" else torch.cat([deep.lower, -deep.upper], dim=-1)
    lb = torch.maximum(lb, lb_deep)
    S = lb.shape[-1] if bound == "lower" else lb.shape[-1] // 2
    return Bounds(lb, None) if bound == "lower" else Bounds(lb[..., :S], -lb[..., S:])


class _Setup:
    """DeepPoly's intermediate bounds and lines of one pass, and the final bound for given lower slopes."""

    def __init__(self, net, params, x, eps, labels, spec, domain, bound, backend, intersect_ibp):
        P = next(iter(params.values())).shape[0] if params else 1
        self.x_lo, self.x_hi = input_region(x, eps, domain)
        self.segs = net.plan(params, x.shape[1:], x.dtype)
        B, K = x.shape[0], self.segs[-1][-1].n_out
        C = spec_matrix(labels, spec, B, K, x)
        if bound == "both":
            C = torch.cat([C, -C], dim=1)
        self.C = C
        boxes, _ = ibp_boxes(self.segs, self.x_lo, self.x_hi, P, backend)
        relax, self.unstable = [], []
        for k, (l, u) in enumerate(boxes):
            if k > 0 or count_maps(self.segs[0]) > 1:
                l, u = _refine(self.segs, relax, k, l, u, self.x_lo, self.x_hi, x.shape[1:], backend,
                               all_rows=not intersect_ibp, windows=True, intersect_ibp=intersect_ibp)
            relax.append(ops.relu_relax(l, u, "deeppoly", backend=backend))
            self.unstable.append((l < 0) & (u > 0))
        self.relax = relax
        self.lam = C.unsqueeze(0).expand(P, *C.shape).contiguous()

    def initial(self) -> list[torch.Tensor]:
        """DeepPoly's lower slopes per (member, sample, row, neuron): the starting point."""
        S = self.lam.shape[2]
        return [a_l.detach().unsqueeze(2).expand(-1, -1, S, -1).clone() for a_l, _, _, _ in self.relax]

    def lower(self, slopes) -> torch.Tensor:
        """Lower bound (P, B, S) of C z with lower slope slopes[k] at ReLU k's unstable neurons (dense
        back-substitution; plain torch ops, so autograd reaches the slopes)."""
        lam, bias = self.lam, None
        for j in range(len(self.segs) - 1, -1, -1):
            lam, b = _through(self.segs[j], lam)
            bias = b if bias is None else bias + b
            if j > 0:
                a_l, c_l, a_u, c_u = (t.unsqueeze(2) for t in self.relax[j - 1])
                a = torch.where(self.unstable[j - 1].unsqueeze(2), slopes[j - 1], a_l)
                pos = lam >= 0
                bias = bias + (lam * torch.where(pos, c_l, c_u)).sum(-1)
                lam = torch.where(pos, lam * a, lam * a_u)
        lo, hi = self.x_lo[None, :, None, :], self.x_hi[None, :, None, :]
        return bias + torch.where(lam >= 0, lam * lo, lam * hi).sum(-1)


def _optimise(setup: _Setup, iterations, lr, lr_decay, patience):
    """Adam on the slopes (intermediate bounds detached); the best slopes and bound of every row."""
    detached = _Detached(setup)
    alpha = [a.requires_grad_() for a in setup.initial()]
    best_alpha = [a.detach().clone() for a in alpha]
    best, stale = None, 0
    opt = torch.optim.Adam(alpha, lr=lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, lr_decay)
    with torch.enable_grad():
        for it in range(iterations):
            lb = detached.lower(alpha)
            with torch.no_grad():
                if best is None:
                    best = lb.detach().clone()
                else:
                    gain = lb > best
                    stale = 0 if bool((lb - best).clamp(min=0).sum() > 0) else stale + 1
                    best = torch.where(gain, lb, best)
                    for b, a in zip(best_alpha, alpha):
                        b.copy_(torch.where(gain.unsqueeze(-1), a, b))
            if it == iterations - 1 or (patience is not None and stale >= patience):
                break
            opt.zero_grad(set_to_none=True)
            (-lb.sum()).backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                for a in alpha:
                    a.clamp_(0.0, 1.0)
    return best_alpha, best


class _Detached(_Setup):
    """A _Setup's numbers without their graph (the optimisation must not reach the parameters)."""

    def __init__(self, setup: _Setup):
        self.x_lo, self.x_hi, self.C, self.unstable = setup.x_lo, setup.x_hi, setup.C, setup.unstable
        self.segs = [[_detach_op(op) for op in seg] for seg in setup.segs]
        self.relax = [tuple(t.detach() for t in r) for r in setup.relax]
        self.lam = setup.lam.detach()


def _detach_op(op):
    import copy

    op = copy.copy(op)
    for name in ("W", "b", "s", "t"):
        if getattr(op, name, None) is not None:
            setattr(op, name, getattr(op, name).detach())
    return op


def _sound_lower(net, params, x, eps, C, domain, intersect_ibp, slopes) -> torch.Tensor:
    """gls.sound's rigorous float64 bound of C z with the given lower slopes at the unstable neurons.

    Every (sample, row) becomes a sample of its own with one row, so gls.sound's per-(member, sample,
    neuron) lines carry per-row slopes; the intermediate bounds are gls.sound's own (rigorous) DeepPoly
    bounds, computed once per sample and repeated per row."""
    from gls import sound

    B, S, K = C.shape
    with torch.no_grad(), torch.backends.cudnn.flags(enabled=False):
        x64 = x.detach().double()
        lo, hi = sound._region(x64, eps, domain)
        p64 = {n: t.detach().double() for n, t in params.items()}
        segs = net.plan(p64, x.shape[1:], torch.float64, sound=True)
        P = next(iter(p64.values())).shape[0] if p64 else 1
        dims = [lo.shape[-1], S] + [d for seg in segs for op in seg for d in (op.n_in, op.n_out)]
        ps = sound._Pass(segs, lo, hi, P, sound._gamma(max(dims) + 2))
        last = len(segs) - 1
        for k in range(last):
            if k > 0 or count_maps(segs[0]) > 1:
                ps.pre[k] = sound._refine(ps, k, "deeppoly", intersect_ibp)
            ps.relax.append(sound._lines(*ps.pre[k], "deeppoly"))

        def rows(t, dim):  # (..., B, ...) -> (..., B * S, ...): each sample once per row
            return t.repeat_interleave(S, dim=dim)

        ps.x_lo, ps.x_hi = rows(lo, 0), rows(hi, 0)
        ps.q = [[rows(q, 1) for q in qs] for qs in ps.q]
        ps.m_in = [[rows(m, 1) for m in ms] for ms in ps.m_in]
        relax = []
        for k, ((l, u), (a_l, c_l, a_u, c_u)) in enumerate(zip(ps.pre, ps.relax)):
            unstable = rows((l < 0) & (u > 0), 1)
            alpha = slopes[k].detach().double().clamp(0.0, 1.0).reshape(P, B * S, -1)
            relax.append((torch.where(unstable, alpha, rows(a_l, 1)), rows(c_l, 1), rows(a_u, 1), rows(c_u, 1)))
        ps.pre = [(rows(l, 1), rows(u, 1)) for l, u in ps.pre]
        ps.relax = relax
        lam = C.double().reshape(1, B * S, 1, K).expand(P, -1, -1, -1).contiguous()
        lb = ps.lower(lam, last).reshape(P, B, S)
        return sound._to_dtype_down(lb, x.dtype)
