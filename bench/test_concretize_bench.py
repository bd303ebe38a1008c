"""Benchmark concretize: every backend against the reference in one run (bench/op_backends.py).

Grid (`--bench-size`): quick = the MNIST input box (N = 784, B = 64, S = 18) for P in 1, 16, 64; full adds
GPU sizes (P = 256, a CIFAR-sized box, and B = 128, S = 9), skipped on a CPU.
"""
from __future__ import annotations

import torch

from bench import op_backends
from bench.harness import measure, record

OP = "concretize"
CASES = {  # (P, B, S, N)
    "quick": [(1, 64, 18, 784), (16, 64, 18, 784), (64, 64, 18, 784)],
    "full": [(256, 128, 18, 784), (64, 128, 18, 3072), (32, 128, 9, 784)],
}


def pytest_generate_tests(metafunc):
    op_backends.parametrize(metafunc, CASES)


def test_concretize(benchmark, request, device, case, impl, full_case):
    kernel = op_backends.implementation(OP, impl, device, full_case)
    P, B, S, N = case
    lo = torch.randn(B, N, device=device)
    args = (torch.randn(P, B, S, N, device=device), torch.randn(P, B, S, device=device), lo, lo + 1)
    with torch.inference_mode():
        measure(benchmark, lambda: kernel(*args), device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=OP, role=op_backends.role(impl), items=P * B * S * N, unit="coefficient", backend=impl)
