"""Benchmark noise_perturb (theta + sigma * eps_p for P antithetic rows): every backend against the
reference in one run (bench/op_backends.py). Grid: quick P = 16, d = 2^16; full P = 256, d = 2^20 (GPU only)."""
from __future__ import annotations

import torch

from bench import op_backends
from bench.harness import measure, record

OP = "noise_perturb"
CASES = {"quick": [(16, 1 << 16)], "full": [(256, 1 << 20)]}  # (P, d)


def pytest_generate_tests(metafunc):
    op_backends.parametrize(metafunc, CASES)


def test_noise_perturb(benchmark, request, device, case, impl, full_case):
    kernel = op_backends.implementation(OP, impl, device, full_case)
    P, d = case
    theta, sigma = torch.randn(d, device=device), torch.full((d,), 0.1, device=device)
    members = torch.arange(P // 2, device=device)
    with torch.inference_mode():
        measure(benchmark, lambda: kernel(theta, sigma, members, 12345, 0, True), device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=OP, role=op_backends.role(impl), items=P * d, unit="element", backend=impl)
