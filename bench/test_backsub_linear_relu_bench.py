"""Benchmark backsub_linear_relu: every backend against the reference and against torch.matmul on the same
shapes (the FLOP/s ceiling), in one run (bench/op_backends.py).

`test_backsub_linear_relu` times the forward (matmul: the bare GEMM, no epilogue; its ratio is the
kernel's fraction of matmul's FLOP/s). `test_backsub_linear_relu_grad` times forward + backward (the
closed-form backward, gls/meta/backsub_linear_relu.py, vs autograd through the reference; throughput
counts the three GEMMs of forward and backward).

Grid (`--bench-size`): quick = MLP 784-100-100-10 shapes (B=64, S=18: 9 margins, lower and upper)
for P in 1, 16, 64, and one CNN-dense-sized step, all CPU-friendly; full adds GPU sizes (CNN7's dense
layers, P = 256, and a 512 x 512 layer at B = 128, S = 9), which are skipped on a CPU.
"""
from __future__ import annotations

import torch

from bench import op_backends
from bench.harness import measure, record
from gls.reference import bound_ops as ref

OP = "backsub_linear_relu"
CASES = {  # (P, B, S, N_out, N_in)
    "quick": [(1, 64, 18, 100, 100), (16, 64, 18, 100, 100), (64, 64, 18, 100, 100), (16, 64, 18, 10, 100),
              (64, 64, 18, 10, 100), (16, 16, 18, 512, 1024)],
    "full": [(256, 64, 18, 100, 100), (64, 128, 18, 512, 4096), (256, 128, 18, 512, 512), (32, 128, 9, 512, 512)],
}
GRAD_CASES = {  # (P, B, S, N_out, N_in): forward and backward (RGS back-propagates through the bounds)
    "quick": [(1, 64, 18, 100, 100), (16, 64, 18, 100, 100), (64, 64, 18, 100, 100)],
    "full": [(256, 64, 18, 100, 100), (64, 128, 18, 512, 1024)],
}


def pytest_generate_tests(metafunc):
    grad = metafunc.function.__name__.endswith("_grad")
    op_backends.parametrize(metafunc, GRAD_CASES if grad else CASES, () if grad else ("matmul",))


def _inputs(case, device, requires_grad=False):
    P, B, S, n_out, n_in = case
    lo = torch.randn(P, B, n_in, device=device)
    relax = ref.relu_relax(lo, lo + torch.rand_like(lo) * 2, "deeppoly")
    args = (torch.randn(P, B, S, n_out, device=device), torch.randn(P, n_out, n_in, device=device) / n_out ** 0.5,
            torch.randn(P, n_out, device=device), *relax)
    return tuple(t.requires_grad_() for t in args) if requires_grad else args


def test_backsub_linear_relu(benchmark, request, device, case, impl, full_case):
    P, B, S, n_out, n_in = case
    args = _inputs(case, device)
    if impl == "matmul":
        lam, W = args[0], args[1]
        fn = lambda: torch.matmul(lam.reshape(P, B * S, n_out), W)  # noqa: E731
    else:
        kernel = op_backends.implementation(OP, impl, device, full_case)
        fn = lambda: kernel(*args)  # noqa: E731
    with torch.inference_mode():
        measure(benchmark, fn, device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=OP, role=op_backends.role(impl), items=2 * P * B * S * n_out * n_in, unit="FLOP", backend=impl)


def test_backsub_linear_relu_grad(benchmark, request, device, case, impl, full_case):
    """Forward and backward: each backend with the closed-form backward vs autograd through the reference."""
    P, B, S, n_out, n_in = case
    kernel = op_backends.implementation(OP, impl, device, full_case)
    args = _inputs(case, device, requires_grad=True)

    def step():
        lam, bias = kernel(*args)
        return torch.autograd.grad(lam.sum() + bias.sum(), args)

    measure(benchmark, step, device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=f"{OP}_grad", role=op_backends.role(impl), items=6 * P * B * S * n_out * n_in, unit="FLOP",
           backend=impl)
