"""Benchmark relu_relax (deeppoly lines): every backend against the reference in one run (bench/op_backends.py).

Grid (`--bench-size`): quick = a 100-neuron MLP layer's bounds (B = 64) for P in 1, 16, 64; full adds
P = 64, B = 128, N = 1024, skipped on a CPU.
"""
from __future__ import annotations

import torch

from bench import op_backends
from bench.harness import measure, record

OP = "relu_relax"
CASES = {"quick": [(1, 64, 100), (16, 64, 100), (64, 64, 100)], "full": [(64, 128, 1024)]}  # (P, B, N)


def pytest_generate_tests(metafunc):
    op_backends.parametrize(metafunc, CASES)


def test_relu_relax(benchmark, request, device, case, impl, full_case):
    kernel = op_backends.implementation(OP, impl, device, full_case)
    l = torch.randn(case, device=device)
    u = l + torch.rand_like(l)
    with torch.inference_mode():
        measure(benchmark, lambda: kernel(l, u, "deeppoly"), device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=OP, role=op_backends.role(impl), items=l.numel(), unit="neuron", backend=impl)
