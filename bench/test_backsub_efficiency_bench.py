"""Back-substitution efficiency: FLOP/s of DeepPoly's back-substitution vs torch.matmul on the same GEMMs.

One counting pass records every back-substitution matmul that DeepPoly actually performs on the
MLP and on the trained cnn3 of bench/trained.py (gls.ops.backsub_linear_relu calls, the Dense
back-steps into the input, and gls.ops.backsub_conv_relu calls on windows; only the rows of each
(member, sample)'s unstable neurons are computed, and only those are counted): FLOPs = 2 * P *
(B * rows) * N_out * N_in per dense call and 2 * P * (B * rows * h * w) * C_out * (C_in * kh * kw) per
window call (the GEMM of its columns, zeros included). Three timings of that same work:
  `matmul`  (baseline): torch.matmul on each recorded GEMM shape, back to back;
  `backsub` (candidate): the recorded back-substitution calls replayed on their recorded inputs
            (GEMM plus the fused ReLU relaxation and bias epilogue);
  `pass`    (candidate): the whole DeepPoly pass (IBP, relaxations, concretisation included), so its
            FLOP/s understates the back-substitution's own.
Efficiency = time(matmul) / time(candidate) = achieved FLOP/s / matmul FLOP/s (bench.report's ratio).
"""
from __future__ import annotations

import pytest
import torch

import gls
from bench import trained, workload
from bench.harness import bench_size, best_round, measure, record

GRID = {"quick": [("mlp", 8, 1), ("mlp", 8, 16), ("mlp", 8, 64), ("cnn3-trained", 32, 1), ("cnn3-trained", 32, 8)],
        "full": [("mlp", 64, 1), ("mlp", 64, 16), ("mlp", 64, 64), ("mlp", 64, 256), ("cnn3-trained", 64, 64)]}
IMPLS = ("pass", "backsub", "matmul")
ROUNDS = {"quick": 3, "full": 10}
METHOD = "deeppoly"


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    cases = [pytest.param(m, B, P, impl, id=f"{m}-B{B}-P{P}-{impl}")
             for m, B, P in GRID[bench_size(metafunc.config)] for impl in IMPLS]
    metafunc.parametrize(("model", "B", "P", "impl"), cases)


def test_backsub_efficiency(benchmark, request, device, model, B, P, impl):
    module, x, y, eps = (trained.build if model.endswith("-trained") else workload.build)(model, B, device)
    net = gls.Network.from_module(module)
    rounds = ROUNDS[bench_size(request.config)]
    why = workload.skip_reason(net, x.shape[1:], METHOD, P, B, device, calls=rounds + 2)
    if why:
        pytest.skip(why)
    params = net.layout.unflatten(workload.population(net, workload.flat_params(module), P))

    def bound_pass():
        return gls.compute_bounds(net, x, eps, method=METHOD, labels=y, params=params)

    with torch.inference_mode():
        calls = workload.record_backsub(bound_pass, replay=True)
        shapes = [shape for _, _, shape in calls]
        if impl == "pass":
            run = bound_pass
        elif impl == "backsub":
            def run():
                return [fn(*args) for fn, args, _ in calls]
        else:
            pairs = [(torch.randn(b, m, k, device=device), torch.randn(b, k, n, device=device)) for b, m, k, n in shapes]

            def run():
                return [torch.matmul(a, w) for a, w in pairs]

        measure(benchmark, run, device, rounds=rounds)
    flops = workload.gemm_flops(shapes)
    record(benchmark, request, suite="backsub_efficiency", role="baseline" if impl == "matmul" else "candidate",
           items=flops, unit="FLOP", flops_per_s=flops / best_round(benchmark), gemms=len(shapes),
           note="items = matmul FLOPs of the back-substitution rows actually computed; "
                "x vs matmul = achieved FLOP/s / torch.matmul FLOP/s on the same GEMM shapes")
