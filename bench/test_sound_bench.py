"""Cost of sound mode: gls.compute_bounds(..., sound=True) vs the default mode, same call otherwise.

impl `sound` (candidate) is the float64 evaluation with the rigorous rounding allowance (gls.sound);
`default` (baseline) is the ordinary pass in float32 on the default backends. One member (P = 1):
sound mode is for certification, where one network is evaluated. Throughput = bounded samples / s;
bench.report prints sound / default (below 1: sound mode is that much slower).

Sizes. quick (CPU): gls.app.models' MLP (784-256-64-10) and CNN3 (bench.workload) with ibp, crown-ibp and
deeppoly; batch 32 for the MLP, 8 for CNN3's IBP/CROWN-IBP and 1 for its DeepPoly (every unstable
neuron of the 16x16x16 layer is back-substituted, ~1e10 multiply-adds per sample). full (GPU): batch
64, DeepPoly CNN3 batch 8.
"""
from __future__ import annotations

import pytest
import torch

import gls
from bench import workload
from bench.harness import bench_size, measure, record

QUICK = [("mlp", "ibp", 32), ("mlp", "crown-ibp", 32), ("mlp", "deeppoly", 32),
         ("cnn3", "ibp", 8), ("cnn3", "crown-ibp", 8), ("cnn3", "deeppoly", 1)]
FULL = [("mlp", m, 64) for m in ("ibp", "crown-ibp", "deeppoly")] + [
    ("cnn3", "ibp", 64), ("cnn3", "crown-ibp", 64), ("cnn3", "deeppoly", 8)]
ROUNDS = {"quick": 3, "full": 5}


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    grid = FULL if bench_size(metafunc.config) == "full" else QUICK
    metafunc.parametrize(("model", "method", "B", "impl"),
                         [pytest.param(m, meth, B, impl, id=f"{m}-{meth}-B{B}-{impl}")
                          for m, meth, B in grid for impl in ("default", "sound")])


def test_sound_mode_cost(benchmark, request, device, model, method, B, impl):
    module, x, y, eps = workload.build(model, B, device)
    net = gls.Network.from_module(module)

    def run():
        return gls.compute_bounds(net, x, eps, method=method, labels=y, sound=impl == "sound")

    with torch.inference_mode():
        measure(benchmark, run, device, rounds=ROUNDS[bench_size(request.config)])
    record(benchmark, request, suite="sound", role="candidate" if impl == "sound" else "baseline",
           items=B, unit="bounds")
