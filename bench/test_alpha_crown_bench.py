"""gls's alpha-CROWN against auto_LiRPA 0.7.1's, in the same run: tightness and speed.

Both run alpha-CROWN with the same settings (20 iterations, Adam, lr 0.5, decay 0.98, keep the best,
early stop after 10 iterations without gain, intermediate bounds fixed at their CROWN/DeepPoly values),
on networks without input normalisation (auto_LiRPA 0.7.1's CROWN can be unsound with a Normalize
before a padded convolution, as the README of the vendored peer archive says), over the same input box and margin
specification. The trained cnn3 and MLP (bench/trained.py) have their Normalize layer removed and get
normalised inputs, box and domain instead: the same function on the same region.

auto_LiRPA 0.7.1 under torch 2.14 needs a patch to optimise at all (the vendor README): its two slope
clamps in BoundRelu._relu_mask_alpha give no gradient at 0 and 1, where every slope starts. This
module patches them for its own calls only (a straight-through clamp, exact because auto_LiRPA clips
the slopes after every step) and leaves the installed package as it is.

* test_alpha_tightness: the mean lower bound of gls and auto_LiRPA on random and trained networks; gls
  must be within 1 % of the margin scale (the mean |margin| at the clean inputs) of auto_LiRPA or better,
  both with intermediate bounds fixed. auto_LiRPA's default call, which also re-optimises the intermediate
  bounds, is recorded beside it (lirpa_optimised_interm_*): a stronger algorithm, not the target.
* test_alpha_speed: P = 8 members of the trained cnn3, B = 32: gls bounds them in one call, auto_LiRPA
  one member at a time (its weights copied into one BoundedModule); bench.report gives the ratio.

auto_LiRPA is not a dependency: without it the cases skip and say so.
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import pytest
import torch
from torch import nn

import gls
from gls.alpha_crown import alpha_crown_bounds
from gls.problem import input_region
from bench import trained, workload
from bench.harness import auto_lirpa, bench_size, best_time, measure, record

SETTINGS = {"iteration": 20, "lr_alpha": 0.5, "lr_decay": 0.98, "early_stop_patience": 10}
NETS = ("random-mlp", "random-cnn", "trained-mlp", "trained-cnn3")
SPEED_IMPLS = ("gls", "lirpa")
ROUNDS = {"quick": 1, "full": 3}


def _mask_alpha(lower, upper, lb_lower_d, ub_lower_d, leaky_alpha=0):
    """auto_LiRPA 0.7.1's BoundRelu._relu_mask_alpha with its two slope clamps straight-through."""
    lower_mask = (lower >= 0).requires_grad_(False).to(lower.dtype)
    upper_mask = (upper <= 0).requires_grad_(False)
    zero_coeffs = False if leaky_alpha > 0 else upper_mask.all()
    no_mask = (1. - lower_mask) * (1. - upper_mask.to(upper.dtype))

    def clip(a):
        a = a + (a.clamp(min=leaky_alpha, max=1.) - a).detach()
        a = a * no_mask + lower_mask
        return a + upper_mask * leaky_alpha if leaky_alpha > 0 else a

    return (None if lb_lower_d is None else clip(lb_lower_d), None if ub_lower_d is None else clip(ub_lower_d),
            zero_coeffs)


@contextlib.contextmanager
def _patched():
    from auto_LiRPA.operators.relu import BoundRelu

    original = BoundRelu.__dict__["_relu_mask_alpha"]
    BoundRelu._relu_mask_alpha = staticmethod(_mask_alpha)
    try:
        yield
    finally:
        BoundRelu._relu_mask_alpha = original


def _problem(name: str, B: int, device):
    """(model without normalisation, x, labels, eps, domain) in the space the model reads."""
    x, y = trained.mnist_test(B)
    if name.startswith("trained-"):
        base = name.removeprefix("trained-")
        model = trained.load(base)
        norm = model[0]
        mean, std = float(norm.mean), float(norm.std)
        model = nn.Sequential(*list(model)[1:]).eval()
        x_n = (x - mean) / std
        return model.to(device), x_n.to(device), y.to(device), trained.EPS[base] / std, ((0 - mean) / std, (1 - mean) / std)
    torch.manual_seed(0)
    if name == "random-mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                              nn.Linear(200, 10))
    else:
        model = nn.Sequential(nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 4, stride=2, padding=1),
                              nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))
    model = model.eval().to(device)
    with torch.no_grad():
        y = model(x.to(device)).argmax(1)  # margins of the predicted class: random nets have no accuracy
    return model, x.to(device), y, 0.02, (0.0, 1.0)


def _lirpa_runner(model, x, y, eps, domain, fixed=True):
    """auto_LiRPA alpha-CROWN of `model` on gls's region: set_weights(list) then run() -> lower (B, 9).

    fixed: intermediate bounds from its CROWN pass, passed in as interm_bounds (the setting of gls and of
    the issue). Without them auto_LiRPA 0.7.1 recomputes every intermediate bound with the current slopes
    at each iteration, i.e. optimises the intermediate bounds too (its fix_interm_bounds option acts only
    on bounds passed in), a stronger and costlier algorithm."""
    lirpa = auto_lirpa()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = lirpa.BoundedModule(copy.deepcopy(model), torch.zeros_like(x[:1]), verbose=0,
                                      bound_opts={"optimize_bound_args": dict(SETTINGS)})
    lo, hi = input_region(x, eps, domain)
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=lo.reshape(x.shape), x_U=hi.reshape(x.shape))
    bx = lirpa.BoundedTensor(x, ptb)
    spec = gls.margin_spec(y, 10).to(x)
    weights = list(bounded.parameters())

    def set_weights(member):
        with torch.no_grad():
            for w, m in zip(weights, member):
                w.copy_(m)

    def run():
        with _patched(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interm = None
            if fixed:
                bounded.compute_bounds(x=(bx,), C=spec, method="CROWN", bound_upper=False)
                interm = {k: (v[0].detach(), v[1].detach()) for k, v in bounded.save_intermediate().items()}
            lb, _ = bounded.compute_bounds(x=(bx,), C=spec, method="alpha-CROWN", bound_upper=False,
                                           interm_bounds=interm)
        return lb.detach()

    return set_weights, run


def _gls(model, x, y, eps, domain, params=None):
    return alpha_crown_bounds(model, x, torch.full((x.shape[0],), eps, device=x.device), labels=y, params=params,
                              domain=domain, iterations=SETTINGS["iteration"], lr=SETTINGS["lr_alpha"],
                              lr_decay=SETTINGS["lr_decay"], patience=SETTINGS["early_stop_patience"]).lower


@pytest.mark.parametrize("net", NETS)
def test_alpha_tightness(benchmark, request, device, net):
    B = 8 if bench_size(request.config) == "quick" else 32
    model, x, y, eps, domain = _problem(net, B, device)
    _, lirpa_run = _lirpa_runner(model, x, y, eps, domain)
    _, lirpa_opt_run = _lirpa_runner(model, x, y, eps, domain, fixed=False)
    lirpa, lirpa_opt = lirpa_run(), lirpa_opt_run()
    lirpa_s, lirpa_opt_s = best_time(lirpa_run, device, rounds=1), best_time(lirpa_opt_run, device, rounds=1)
    ours = measure(benchmark, lambda: _gls(model, x, y, eps, domain), device, rounds=ROUNDS[bench_size(request.config)])[0]
    deep = gls.compute_bounds(model, x, torch.full((B,), eps), method="deeppoly", labels=y, domain=domain).lower[0]
    with torch.no_grad():
        scale = float((gls.margin_spec(y, 10).to(x) @ model(x).unsqueeze(-1)).abs().mean())
    gap = float(ours.mean() - lirpa.mean()) / scale
    record(benchmark, request, suite="alpha-tightness", role="candidate", items=B, unit="bounds",
           gls_mean=float(ours.mean()), lirpa_mean=float(lirpa.mean()), deeppoly_mean=float(deep.mean()),
           margin_scale=scale, gap_of_scale=gap, lirpa_seconds=lirpa_s,
           lirpa_optimised_interm_mean=float(lirpa_opt.mean()), lirpa_optimised_interm_seconds=lirpa_opt_s,
           gap_to_optimised_interm_of_scale=float(ours.mean() - lirpa_opt.mean()) / scale)
    assert gap >= -0.01, f"gls's alpha-CROWN is {100 * -gap:.2f} % of the margin scale below auto_LiRPA's"


@pytest.mark.parametrize("impl", SPEED_IMPLS)
def test_alpha_speed(benchmark, request, device, impl):
    P, B = 8, 32
    model, x, y, eps, domain = _problem("trained-cnn3", B, device)
    net = gls.Network.from_module(model)
    theta = net.layout.flatten(net.params())[0].detach()
    params = net.layout.unflatten(workload.population(net, theta, P))
    if impl == "gls":
        def run():
            return _gls(net, x, y, eps, domain, params={n: t.detach() for n, t in params.items()})
    else:
        set_weights, one = _lirpa_runner(model, x, y, eps, domain)
        members = [[params[n][p] for n in net.layout.names] for p in range(P)]

        def run():
            out = []
            for member in members:
                set_weights(member)
                out.append(one())
            return torch.stack(out)
    lower = measure(benchmark, run, device, rounds=ROUNDS[bench_size(request.config)], warmup=0)
    record(benchmark, request, suite="alpha-speed", role="candidate" if impl == "gls" else "baseline",
           items=B * P, unit="bounds", mean_lower=float(lower.mean()))
