"""Back-substitution efficiency: FLOP/s of DeepPoly's back-substitution vs torch.matmul on the same GEMMs.

One counting pass records every back-substitution matmul that DeepPoly actually performs on the
MLP (gls.ops.backsub_linear_relu calls and the Dense back-steps into the input; only the rows of
unstable neurons are computed, and only those are counted): FLOPs = 2 * P * (B * rows) * N_out * N_in
per call. Three timings of that same work:
  `matmul`  (baseline): torch.matmul on each recorded GEMM shape, back to back;
  `backsub` (candidate): the recorded back-substitution calls replayed on their recorded inputs
            (GEMM plus the fused ReLU relaxation and bias epilogue);
  `pass`    (candidate): the whole DeepPoly pass (IBP, relaxations, concretisation included), so its
            FLOP/s understates the back-substitution's own.
Efficiency = time(matmul) / time(candidate) = achieved FLOP/s / matmul FLOP/s (bench.report's ratio).
"""
from __future__ import annotations

from unittest import mock

import pytest
import torch

import gls
from gls import affine, ops
from bench import workload
from bench.harness import bench_size, measure, record

GRID = {"quick": [(8, 1), (8, 16), (8, 64)], "full": [(64, 1), (64, 16), (64, 64), (64, 256)]}  # (B, P)
IMPLS = ("pass", "backsub", "matmul")
ROUNDS = {"quick": 3, "full": 10}
METHOD = "deeppoly"


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    cases = [pytest.param("mlp", B, P, impl, id=f"mlp-B{B}-P{P}-{impl}")
             for B, P in GRID[bench_size(metafunc.config)] for impl in IMPLS]
    metafunc.parametrize(("model", "B", "P", "impl"), cases)


def record_backsub(run):
    """Run `run()` once and return its back-substitution calls as (function, args, GEMM shape)."""
    calls = []
    real_backsub, real_back = ops.backsub_linear_relu, affine.Dense.back

    def backsub(lam, W, *rest, **kw):
        calls.append((lambda *a: real_backsub(*a, **kw), (lam, W, *rest), (lam.shape[0], lam.shape[1] * lam.shape[2],
                                                                            W.shape[-2], W.shape[-1])))
        return real_backsub(lam, W, *rest, **kw)

    def back(self, lam):
        calls.append((lambda lam_: real_back(self, lam_), (lam,), (lam.shape[0], lam.shape[1] * lam.shape[2],
                                                                  self.W.shape[-2], self.W.shape[-1])))
        return real_back(self, lam)

    with mock.patch.object(ops, "backsub_linear_relu", backsub), mock.patch.object(affine.Dense, "back", back):
        run()
    if not calls:
        raise RuntimeError("no back-substitution call was recorded: has gls.bounds stopped using "
                           "gls.ops.backsub_linear_relu / gls.affine.Dense.back?")
    return calls


def test_backsub_efficiency(benchmark, request, device, model, B, P, impl):
    module, x, y, eps = workload.build(model, B, device)
    net = gls.Network.from_module(module)
    rounds = ROUNDS[bench_size(request.config)]
    why = workload.skip_reason(net, x.shape[1:], METHOD, P, B, device, calls=rounds + 2)
    if why:
        pytest.skip(why)
    params = net.layout.unflatten(workload.population(net, workload.flat_params(module), P))

    def bound_pass():
        return gls.compute_bounds(net, x, eps, method=METHOD, labels=y, params=params)

    with torch.inference_mode():
        calls = record_backsub(bound_pass)
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
           items=flops, unit="FLOP", flops_per_s=flops / benchmark.stats.stats.min, gemms=len(shapes),
           note="items = matmul FLOPs of the back-substitution rows actually computed; "
                "x vs matmul = achieved FLOP/s / torch.matmul FLOP/s on the same GEMM shapes")
