"""Population bound throughput: gls's batched pass vs a loop of P single-network calls, the reference
backend and auto_LiRPA's loop over the members.

impl `gls` bounds all P members in one `gls.compute_bounds` call (default backends); `loop` makes P
calls with one member each (what a user without population batching does); `reference` is the
batched pass on the plain-PyTorch ops (`backend="reference"`); `lirpa` is auto_LiRPA 0.7.1 bounding
one member at a time (one BoundedModule, each member's weights copied in; ibp = "IBP", crown-ibp =
"CROWN-IBP", deeppoly = "CROWN"), skipped with the reason when auto_LiRPA is not installed (it is
not a dependency; bench/test_peer_bench.py says how to install it). Throughput = bounded samples x
members per second. At P = 1 the loops are the single call itself, so they are not run.

Sizes. full (GPU): batch 64, P in {1, 16, 64, 256}, every model and method. quick (CPU, keeps the
suite inside 10 minutes on 2 cores): batch 64 where it is cheap (IBP, CROWN-IBP on the MLP), smaller
batches where back-substitution is heavy (DeepPoly MLP 8, CROWN-IBP CNN3 8, DeepPoly CNN3 1), CNN3
DeepPoly only up to P = 8 (~1e11 FLOP per P = 16 call: a minute per impl on 2 cores) and CNN7 only
with IBP, batch 4, P <= 16. Whatever size is asked, a case
whose estimated memory or time (bench.workload.skip_reason: all ReLUs unstable, an assumed FLOP
rate) exceeds what this machine can do in two minutes is skipped with the estimate in the reason.
DeepPoly back-substitutes a row per unstable neuron of every layer, each row costing a whole
layer's multiply-adds: at batch 64 that is ~0.4 TFLOP for one CNN3 member and ~1e17 FLOP for CNN7.
"""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import gls
from bench import workload
from bench.harness import auto_lirpa, bench_size, measure, record

FULL_P = (1, 16, 64, 256)
QUICK = [  # (model, method, batch, populations)
    ("mlp", "ibp", 64, (1, 16, 64)),
    ("mlp", "crown-ibp", 64, (1, 16, 64)),
    ("mlp", "deeppoly", 8, (1, 16, 64)),
    ("cnn3", "ibp", 64, (1, 16, 64)),
    ("cnn3", "crown-ibp", 8, (1, 16, 64)),
    ("cnn3", "deeppoly", 1, (1, 8)),
    ("cnn7", "ibp", 4, (1, 16)),
]
FULL = [(m, meth, 64, FULL_P) for m in ("mlp", "cnn3", "cnn7") for meth in ("ibp", "crown-ibp", "deeppoly")]
IMPLS = ("gls", "loop", "reference", "lirpa")
LOOPS = ("loop", "lirpa")
LIRPA_METHOD = {"ibp": "IBP", "crown-ibp": "CROWN-IBP", "deeppoly": "CROWN"}
ROUNDS = {"quick": 5, "full": 5}


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    grid = FULL if bench_size(metafunc.config) == "full" else QUICK
    cases = [pytest.param(m, meth, B, P, impl, id=f"{m}-{meth}-B{B}-P{P}-{impl}")
             for m, meth, B, pops in grid for P in pops for impl in IMPLS if not (impl in LOOPS and P == 1)]
    metafunc.parametrize(("model", "method", "B", "P", "impl"), cases)


def test_population_bounds(benchmark, request, device, model, method, B, P, impl):
    module, x, y, eps = workload.build(model, B, device)
    net = gls.Network.from_module(module)
    rounds = ROUNDS[bench_size(request.config)]
    why = workload.skip_reason(net, x.shape[1:], method, P, B, device, calls=rounds + 1,
                               members_per_call=1 if impl in LOOPS else P,
                               extra_bytes=4 * 2 * P * net.layout.numel if impl in LOOPS else 0)
    if why:
        pytest.skip(why)
    params = net.layout.unflatten(workload.population(net, workload.flat_params(module), P))
    if impl == "lirpa":
        run = _lirpa_loop(module, net, params, P, x, y, eps, method)
    elif impl == "loop":
        members = [{k: v[p:p + 1] for k, v in params.items()} for p in range(P)]

        def run():
            return [gls.compute_bounds(net, x, eps, method=method, labels=y, params=m) for m in members]
    else:
        backend = "reference" if impl == "reference" else None

        def run():
            return gls.compute_bounds(net, x, eps, method=method, labels=y, params=params, backend=backend)

    try:
        with torch.inference_mode():
            measure(benchmark, run, device, rounds=rounds)
    except torch.cuda.OutOfMemoryError as exc:
        torch.cuda.empty_cache()
        pytest.skip(f"out of GPU memory: {exc}")
    except RuntimeError as exc:  # the peer's own failure (auto_LiRPA 0.7.1 CROWN on cnn3 at B = 1) is a skip
        if impl != "lirpa":
            raise
        pytest.skip(f"auto_LiRPA fails on this case: {exc}")
    record(benchmark, request, suite="bounds", role="candidate" if impl == "gls" else "baseline",
           items=B * P, unit="bounds")


def _lirpa_loop(module, net, params, P, x, y, eps, method):
    """auto_LiRPA bounding the members one at a time (skips when auto_LiRPA is not installed)."""
    lirpa = auto_lirpa()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = lirpa.BoundedModule(copy.deepcopy(module), torch.zeros_like(x[:1]), verbose=0)
    weights = list(bounded.parameters())  # the order of the Sequential's parameters, as net.layout's
    members = [[params[n][p] for n in net.layout.names] for p in range(P)]
    spec = gls.margin_spec(y, workload.NUM_CLASSES)
    box = lirpa.BoundedTensor(x, lirpa.PerturbationLpNorm(norm=float("inf"), eps=eps, x_L=(x - eps).clamp(0, 1),
                                                          x_U=(x + eps).clamp(0, 1)))

    def run():
        out = []
        for member in members:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():  # as a user runs it
                for w, m in zip(weights, member):
                    w.copy_(m)
                warnings.simplefilter("ignore")
                out.append(bounded.compute_bounds(x=(box,), C=spec, method=LIRPA_METHOD[method], bound_upper=False)[0])
        return out

    return run
