"""alpha-CROWN: DeepPoly's final bound with every unstable ReLU's lower slope optimised (Xu et al., ICLR 2021).

A ReLU's lower line y >= a z is valid for every a in [0, 1], so each slope is a free variable: one per
(member, sample, specification row, neuron) of every ReLU, initialised at DeepPoly's choice (0 or 1)
and raised by Adam on the sum of the lower bounds. Rows, samples and members are independent, so that
sum's gradient is each row's own gradient and the whole population is optimised in one batched loop.
Intermediate bounds are DeepPoly's (gls.bounds), fixed. The best bound of every row over the iterations
is kept (the slopes are stored densely, (P, B, S, N) per ReLU, only the unstable ones used); the result
is the elementwise max with DeepPoly's own bound, so it is never looser. Defaults are auto_LiRPA 0.7.1's
(iterations 20, Adam lr 0.5, lr decay 0.98 per iteration, early stop after 10 iterations without gain).

The slopes enter the bound through torch.where, never a clamp: torch 2.14's clamp(x, 0, 1) gives no
gradient where x is exactly 0 or 1, where every DeepPoly slope starts (it is why auto_LiRPA 0.7.1's
alpha-CROWN does not move under torch 2.14). They are kept in [0, 1] by clipping after each Adam step.

sound=True optimises in float32, then evaluates the chosen slopes with gls.sound's float64 back-
substitution and rounding allowance (its argument holds for any lower line a z with a in [0, 1]: the
line is valid in real arithmetic and the products' rounding is paid for), and takes the max with
DeepPoly's sound bound.
"""
from __future__ import annotations

import copy

import torch

from gls.bounds import EXTENSIONS, compute_bounds, deeppoly_pass
from gls.net import Network, check_input, param_dtype
from gls.precision import exact_float32
from gls.problem import Bounds, spec_matrix
from gls.sound import deeppoly_lower_with_slopes

NAME = "alpha-crown"


@exact_float32()  # as compute_bounds: no TF32 inside the optimisation and the final evaluation either
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
    params, _ = net.resolve_params(params)
    x = check_input(x, param_dtype(params, x))
    deep = compute_bounds(net, x, eps, method="deeppoly", labels=labels, spec=spec, params=params, domain=domain,
                          bound=bound, backend=backend, intersect_ibp=intersect_ibp, sound=sound)
    if net.num_relus == 0:  # no slope to optimise: DeepPoly is exact up to its concretisation
        return deep
    if sound:  # optimise in float32, evaluate soundly in float64
        work = {n: t.detach().float() for n, t in params.items()}
        xw = x.detach().float()
    else:
        work, xw = params, x
    setup = _Setup(net, work, xw, eps, labels, spec, domain, bound, backend, intersect_ibp)
    slopes = _optimise(setup, iterations, lr, lr_decay, patience)
    if sound:
        C = _spec(labels, spec, x.double(), setup.C.shape[-1], bound)  # the caller's spec, not its float32 copy
        lb = deeppoly_lower_with_slopes(net, params, x, eps, C, domain=domain, intersect_ibp=intersect_ibp,
                                        slopes=slopes)
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
        self.segs, self.x_lo, self.x_hi, pre, self.relax = deeppoly_pass(
            net, params, x, eps, domain=domain, backend=backend, intersect_ibp=intersect_ibp)
        self.unstable = [(l < 0) & (u > 0) for l, u in pre]
        self.C = _spec(labels, spec, x, self.segs[-1][-1].n_out, bound)
        self.lam = self.C.unsqueeze(0).expand(P, *self.C.shape).contiguous()

    def initial(self) -> list[torch.Tensor]:
        """DeepPoly's lower slopes per (member, sample, row, neuron): the starting point."""
        S = self.lam.shape[2]
        return [a_l.detach().unsqueeze(2).expand(-1, -1, S, -1).clone() for a_l, _, _, _ in self.relax]

    def lower(self, slopes) -> torch.Tensor:
        """Lower bound (P, B, S) of C z with lower slope slopes[k] at ReLU k's unstable neurons (dense
        back-substitution; plain torch ops, so autograd reaches the slopes)."""
        lam, bias = self.lam, None
        for j in range(len(self.segs) - 1, -1, -1):
            for op in reversed(self.segs[j]):
                lam, b = op.back(lam)
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
    """Adam on the slopes (intermediate bounds detached); the slopes of every row's best bound."""
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
    return best_alpha


class _Detached(_Setup):
    """A _Setup's numbers without their graph (the optimisation must not reach the parameters)."""

    def __init__(self, setup: _Setup):
        self.x_lo, self.x_hi, self.C, self.unstable = setup.x_lo, setup.x_hi, setup.C, setup.unstable
        self.segs = [[_detach_op(op) for op in seg] for seg in setup.segs]
        self.relax = [tuple(t.detach() for t in r) for r in setup.relax]
        self.lam = setup.lam.detach()


def _detach_op(op):
    op = copy.copy(op)
    for name in ("W", "b", "s", "t"):
        if getattr(op, name, None) is not None:
            setattr(op, name, getattr(op, name).detach())
    return op


def _spec(labels, spec, like, K, bound) -> torch.Tensor:
    """C (B, S, K) of gls.problem.spec_matrix, with -C appended for bound="both"."""
    C = spec_matrix(labels, spec, like.shape[0], K, like)
    return torch.cat([C, -C], dim=1) if bound == "both" else C


EXTENSIONS[NAME] = alpha_crown_bounds
