"""backsub_conv_relu on every backend against its plain-PyTorch reference, and against the bare GEMM
(torch.matmul of the windows' columns, lam^T (R*h*w, C_out) times W (C_out, C_in*kh*kw)) that bounds
its FLOP/s, forward and forward + backward, in one run.

Shapes are the calls DeepPoly makes on cnn3 (MNIST): a refinement's first step (one-hot 1x1 windows
of conv2's 32 channels through conv2, 4x4 stride 2, onto 16 x 4 x 4 windows), its last (16 x 4 x 4
windows through conv1, 5x5 stride 2, onto 1 x 11 x 11 windows of the input box), and the final
specification's whole-map windows (32 x 7 x 7 through conv2). R = rows per (member, sample).
impl: `cpp`/`cuda`/`triton` (candidates, where they run), `reference` and `matmul` (baselines).
"""
from __future__ import annotations

import pytest
import torch

from gls import ops
from gls.reference import bound_ops as ref
from bench.harness import bench_size, measure, record

ROUNDS = {"quick": 3, "full": 10}
CASES = {  # (P, B, R, C_out, h, w, C_in, kh, kw, H, W, stride, one-hot)
    "quick": [(1, 32, 250, 32, 1, 1, 16, 4, 4, 14, 14, 2, True), (8, 32, 250, 32, 1, 1, 16, 4, 4, 14, 14, 2, True),
              (8, 32, 250, 16, 4, 4, 1, 5, 5, 28, 28, 2, False), (8, 32, 9, 32, 7, 7, 16, 4, 4, 14, 14, 2, False)],
    "full": [(64, 64, 250, 32, 1, 1, 16, 4, 4, 14, 14, 2, True), (64, 64, 250, 16, 4, 4, 1, 5, 5, 28, 28, 2, False)],
}
IMPLS = ("cpp", "cuda", "triton", "reference", "matmul")


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    size = bench_size(metafunc.config)
    cases = CASES["quick"] + (CASES["full"] if size == "full" else [])
    metafunc.parametrize(("case", "grad", "impl"),
                         [pytest.param(c, g, impl, id=f"{'-'.join(map(str, c[:11]))}{'-grad' if g else ''}-{impl}")
                          for c in cases for g in (False, True) for impl in IMPLS if not (g and impl == "matmul")])


def _inputs(case, device):
    P, B, R, co, h, w, ci, kh, kw, H, W, stride, one_hot = case
    gen = torch.Generator().manual_seed(0)
    if one_hot:  # a refinement's start: +-1 at one channel of a 1x1 window
        lam = torch.zeros(P, B, R, co, h, w)
        lam.view(P * B * R, -1)[torch.arange(P * B * R), torch.randint(0, co * h * w, (P * B * R,), generator=gen)] = 1.0
    else:
        lam = torch.randn(P, B, R, co, h, w, generator=gen)
    Wt = torch.randn(P, co, ci, kh, kw, generator=gen) / (ci * kh * kw) ** 0.5
    b = torch.randn(P, co, generator=gen)
    lines = [torch.rand(P, B, ci, H, W, generator=gen) for _ in range(4)]
    origin = torch.randint(-2, max(H - 2, 1), (P, B, R, 2), generator=gen)
    return [t.to(device) for t in (lam, Wt, b, *lines, origin)] + [[stride, stride], [1, 1]]


def test_backsub_conv_relu(benchmark, request, device, case, grad, impl):
    args = _inputs(case, device)
    P, B, R, co, h, w, ci, kh, kw = case[:9]
    if impl == "matmul":
        lam, Wt = args[0], args[1]
        a = lam.reshape(P, B * R, co, h * w).transpose(-1, -2).reshape(P, -1, co).contiguous()
        Wm = Wt.reshape(P, co, -1)

        def run():
            return torch.bmm(a, Wm)
    else:
        backend = None if impl == "reference" else impl
        if backend is not None:
            try:
                ops.resolve("backsub_conv_relu", args[0].device, backend)
            except RuntimeError as exc:
                pytest.skip(str(exc))
        fn = ref.backsub_conv_relu if backend is None else (lambda *a: ops.backsub_conv_relu(*a, backend=backend))
        if grad:
            leaves = [t.requires_grad_(True) if i in (0, 1, 2, 3, 4, 5, 6) else t for i, t in enumerate(args)]

            def run():
                out, bias = fn(*leaves)
                torch.autograd.backward((out, bias), (torch.ones_like(out), torch.ones_like(bias)))
        else:
            def run():
                with torch.no_grad():
                    return fn(*args)
    measure(benchmark, run, args[0].device, rounds=ROUNDS[bench_size(request.config)])
    flops = 2 * P * B * R * h * w * co * ci * kh * kw * (3 if grad else 1)
    record(benchmark, request, suite="backsub_conv_relu", role="baseline" if impl in ("reference", "matmul") else "candidate",
           items=flops, unit="FLOP", note="items = dense GEMM FLOPs of the windows' columns (zeros included)")
