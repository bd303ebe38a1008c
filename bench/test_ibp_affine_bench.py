"""Benchmark ibp_affine: every backend against the reference and against torch.matmul on the same shapes
(the two bare GEMMs: the FLOP/s ceiling), in one run (bench/op_backends.py).

Grid (`--bench-size`): quick = MNIST MLP layers (784 -> 100, 100 -> 100, B = 64) for P in 1, 16, 64, and
weights shared by the population; full adds GPU sizes (P = 256, a 4096 -> 512 layer, and 512 -> 512 at
P = 32, B = 128), skipped on a CPU.
"""
from __future__ import annotations

import torch

from bench import op_backends
from bench.harness import measure, record

OP = "ibp_affine"
CASES = {  # (P, B, N_in, N_out, W shared)
    "quick": [(1, 64, 784, 100, False), (16, 64, 784, 100, False), (64, 64, 784, 100, False),
              (64, 64, 100, 100, False), (64, 64, 784, 100, True)],
    "full": [(256, 128, 784, 100, False), (256, 128, 4096, 512, False), (256, 128, 4096, 512, True), (32, 128, 512, 512, False)],
}


def pytest_generate_tests(metafunc):
    op_backends.parametrize(metafunc, CASES, ("matmul",))


def test_ibp_affine(benchmark, request, device, case, impl, full_case):
    P, B, n_in, n_out, shared = case
    mid, rad = torch.randn(P, B, n_in, device=device), torch.rand(P, B, n_in, device=device)
    W = torch.randn(1 if shared else P, n_out, n_in, device=device)
    b = torch.randn(W.shape[0], n_out, device=device)
    if impl == "matmul":
        fn = lambda: (torch.matmul(mid, W.transpose(-1, -2)), torch.matmul(rad, W.transpose(-1, -2)))  # noqa: E731
    else:
        kernel = op_backends.implementation(OP, impl, device, full_case)
        fn = lambda: kernel(mid, rad, W, b)  # noqa: E731
    with torch.inference_mode():
        measure(benchmark, fn, device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=OP, role=op_backends.role(impl), items=4 * P * B * n_in * n_out, unit="FLOP", backend=impl)
