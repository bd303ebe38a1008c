"""gls against its peer, auto_LiRPA, in the same run: bounds of a population of a trained network.

A researcher without gls bounds a population one member at a time with auto_LiRPA; `lirpa` is that
loop (one BoundedModule, each member's weights copied in, `compute_bounds` per member), `gls` is one
`gls.compute_bounds` call for all members. Same network (bench/trained.py: cnn3 after gls's short IBP
training on MNIST), same real MNIST test images, same eps (0.1) and the same margin specification;
method names map as deeppoly = auto_LiRPA "CROWN" (back-substituted intermediate bounds), crown-ibp =
"CROWN-IBP", ibp = "IBP". `grad` cases time a plain-gradient training step's bound work: the lower
bound, the robust loss and its backward to the weights.

auto_LiRPA is not a dependency of gls: install it to compare (`pip install --no-deps
auto_LiRPA-0.7.1.tar.gz` from the upstream release, then `pip install packaging tqdm appdirs graphviz`);
without it the `lirpa` cases skip and say so.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import gls
from gls.app import data, models
from bench import trained, workload
from bench.harness import auto_lirpa, bench_size, best_round, measure, peak_extra_bytes, record

CASES = [  # (method, P, B, grad)
    ("deeppoly", 8, 32, False),
    ("deeppoly", 1, 32, True),
    ("crown-ibp", 8, 32, False),
    ("ibp", 8, 32, False),
]
LIRPA_METHOD = {"deeppoly": "CROWN", "crown-ibp": "CROWN-IBP", "ibp": "IBP"}
IMPLS = ("gls", "lirpa")
ROUNDS = {"quick": 10, "full": 10}  # best of 10, gls and the peer alike: on a shared machine a burst of
# other load can slow several rounds in a row (seen on the 2-core EPYC: the same step 35-57 ms)


def pytest_generate_tests(metafunc):
    if metafunc.function.__name__ == "test_peer_bounds":
        metafunc.parametrize(("method", "P", "B", "grad", "impl"),
                             [pytest.param(*c, impl, id=f"cnn3-{c[0]}-P{c[1]}-B{c[2]}{'-grad' if c[3] else ''}-{impl}")
                              for c in CASES for impl in IMPLS])


def _lirpa_loop(model, members, x, y, eps, method, grad):
    """One member at a time through auto_LiRPA: (run, closing) callables."""
    lirpa = auto_lirpa()
    net = copy.deepcopy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = lirpa.BoundedModule(net, torch.zeros_like(x[:1]), verbose=0)
    weights = list(bounded.parameters())
    spec = gls.margin_spec(y, 10)
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=lo, x_U=hi)
    bx = lirpa.BoundedTensor(x, ptb)

    def run():
        out = []
        for member in members:
            with torch.no_grad():
                for w, m in zip(weights, member):
                    w.copy_(m)
            with torch.set_grad_enabled(grad), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lb, _ = bounded.compute_bounds(x=(bx,), C=spec, method=LIRPA_METHOD[method], bound_upper=False)
                if grad:
                    gls.robust_loss(lb.unsqueeze(0)).sum().backward()
            out.append(lb.detach())
        return out

    return run


def _gls_call(net, params, x, y, eps, method, grad):
    def run():
        with torch.set_grad_enabled(grad):
            p = {k: v.detach().requires_grad_(grad) for k, v in params.items()}
            lb = gls.compute_bounds(net, x, eps, method=method, labels=y, params=p).lower
            if grad:
                gls.robust_loss(lb).sum().backward()
        return lb.detach()

    return run


def test_peer_bounds(benchmark, request, device, method, P, B, grad, impl):
    model = trained.load("cnn3").to(device)
    x, y = (t.to(device) for t in trained.mnist_test(B))
    eps = trained.EPS["cnn3"]
    net = gls.Network.from_module(model)
    theta = net.layout.flatten(net.params())[0].detach()
    params = net.layout.unflatten(workload.population(net, theta, P))
    if impl == "lirpa":
        members = [[params[n][p] for n in net.layout.names] for p in range(P)]
        run = _lirpa_loop(model, members, x, y, eps, method, grad)
    else:
        run = _gls_call(net, params, x, y, eps, method, grad)
    measure(benchmark, run, device, rounds=ROUNDS[bench_size(request.config)])
    record(benchmark, request, suite="peer", role="candidate" if impl == "gls" else "baseline",
           items=B * P, unit="bounds")


CNN7_BATCH = {"quick": 1, "full": 8}


def _lirpa_images(model, x, y, eps):
    """auto_LiRPA's CROWN lower bound image by image: at one MNIST image its CNN7 pass peaks at about 8 GB
    (patches mode), so a batch of 8 would need about 64 GB; a researcher loops over the images."""
    lirpa = auto_lirpa()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = lirpa.BoundedModule(copy.deepcopy(model), torch.zeros_like(x[:1]), verbose=0)

    def run():
        out = []
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            ptb = lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(xi - eps).clamp(0, 1),
                                           x_U=(xi + eps).clamp(0, 1))
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lb, _ = bounded.compute_bounds(x=(lirpa.BoundedTensor(xi, ptb),), C=gls.margin_spec(y[i:i + 1], 10),
                                               method="CROWN", bound_upper=False)
            out.append(lb)
        return torch.cat(out)

    return run


@pytest.mark.parametrize("impl", ["deeppoly", "crown-ibp", "lirpa"])
def test_cnn7_deeppoly(benchmark, request, device, impl):
    """DeepPoly on gls.app.models cnn7 (MNIST, IBP initialisation, untrained: nearly every ReLU unstable, the
    costly case), P = 1, bounds only: time and peak memory, against auto_LiRPA's CROWN on the same inputs
    (`lirpa`, image by image) and gls's CROWN-IBP. The DeepPoly case also records the GEMM FLOPs of the rows
    and windows it computes (bench.workload.record_backsub), their rate, and their fraction of the same
    back-substitutions done densely (every neuron, whole maps: bench.workload.dense_backsub_flops)."""
    B = CNN7_BATCH[bench_size(request.config)]
    model = models.build("cnn7", data.SHAPES["mnist"], *data.STATS["mnist"], init="ibp").eval().to(device)
    x, y = (t.to(device) for t in trained.mnist_test(B))
    eps = 0.1
    info = {}
    if impl == "lirpa":
        run = _lirpa_images(model, x, y, eps)
    else:
        def run():
            with torch.inference_mode():
                return gls.compute_bounds(model, x, eps, method=impl, labels=y).lower

    if impl == "deeppoly":
        shapes = []
        peak, how = peak_extra_bytes(lambda: shapes.extend(s for *_, s in workload.record_backsub(run)), device)
        net = gls.Network.from_module(model)
        flops = workload.gemm_flops(shapes)
        dense = workload.dense_backsub_flops(net, x.shape[1:], impl, 1, B, specs=9)
        info = dict(backsub_flops=float(flops), flop_fraction=flops / dense)
    else:
        peak, how = peak_extra_bytes(run, device)
    measure(benchmark, run, device, rounds=1, warmup=0)
    if impl == "deeppoly":
        info["flops_per_s"] = info["backsub_flops"] / best_round(benchmark)
    record(benchmark, request, suite="cnn7", role="candidate" if impl == "deeppoly" else "baseline", items=B,
           unit="bounds", peak_bytes=peak, memory_measure=how, **info)
