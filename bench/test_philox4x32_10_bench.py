"""Benchmark philox4x32_10 (the raw block function): every backend against the reference in one run
(bench/op_backends.py). Grid: quick 2^16 blocks, full 2^22 blocks (GPU only)."""
from __future__ import annotations

import torch

from bench import op_backends
from bench.harness import measure, record

OP = "philox4x32_10"
CASES = {"quick": [(1 << 16,)], "full": [(1 << 22,)]}  # (blocks,)


def pytest_generate_tests(metafunc):
    op_backends.parametrize(metafunc, CASES)


def test_philox4x32_10(benchmark, request, device, case, impl, full_case):
    kernel = op_backends.implementation(OP, impl, device, full_case)
    (n,) = case
    counter = torch.randint(0, 2**32, (n, 4), device=device)
    key = torch.randint(0, 2**32, (n, 2), device=device)
    with torch.inference_mode():
        measure(benchmark, lambda: kernel(counter, key), device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=OP, role=op_backends.role(impl), items=4 * n, unit="word", backend=impl)
