"""Benchmark noise_normal: every backend against the reference in one run (bench/op_backends.py).
(bench/test_noise_bench.py compares the default backend with torch.randn.) Grid: quick P = 16,
d = 2^16; full P = 256, d = 2^20 (GPU only)."""
from __future__ import annotations

import torch

from bench import op_backends
from bench.harness import measure, record

OP = "noise_normal"
CASES = {"quick": [(16, 1 << 16)], "full": [(256, 1 << 20)]}  # (P, d)


def pytest_generate_tests(metafunc):
    op_backends.parametrize(metafunc, CASES)


def test_noise_normal(benchmark, request, device, case, impl, full_case):
    kernel = op_backends.implementation(OP, impl, device, full_case)
    P, d = case
    members = torch.arange(P // 2, device=device)
    with torch.inference_mode():
        measure(benchmark, lambda: kernel(members, d, 12345, 0, True), device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=OP, role=op_backends.role(impl), items=P * d, unit="normal", backend=impl)
