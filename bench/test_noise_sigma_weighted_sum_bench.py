"""Benchmark noise_sigma_weighted_sum (a PGPE reduction over P antithetic rows, noise regenerated): every backend against
the reference in one run (bench/op_backends.py). (bench/test_noise_bench.py has the memory at CNN7 scale.)
Grid: quick P = 16, d = 2^16; full P = 256, d = 2^20 (GPU only)."""
from __future__ import annotations

import torch

from bench import op_backends
from bench.harness import measure, record

OP = "noise_sigma_weighted_sum"
CASES = {"quick": [(16, 1 << 16)], "full": [(256, 1 << 20)]}  # (P, d)


def pytest_generate_tests(metafunc):
    op_backends.parametrize(metafunc, CASES)


def test_noise_sigma_weighted_sum(benchmark, request, device, case, impl, full_case):
    kernel = op_backends.implementation(OP, impl, device, full_case)
    P, d = case
    weights, sigma = torch.randn(P, device=device), torch.full((d,), 0.1, device=device)
    members = torch.arange(P // 2, device=device)
    with torch.inference_mode():
        measure(benchmark, lambda: kernel(weights, sigma, members, d, 12345, 0, True), device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=OP, role=op_backends.role(impl), items=P * d, unit="element", backend=impl)
