"""Benchmark: Triton backsub_linear_relu against the reference on the same CUDA tensors, in one group.

Run with `pytest bench/ --benchmark-only`; bench.report lists the reference/Triton ratio
(suite triton_backsub_linear_relu). Skipped without a CUDA device: interpreter timings mean nothing.
"""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("benchmarks need a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from bench.harness import record, synced  # noqa: E402
from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.backsub_linear_relu import backsub_linear_relu  # noqa: E402

IMPLS = {"reference": ref.backsub_linear_relu, "triton": backsub_linear_relu}


@pytest.mark.parametrize("impl", IMPLS)
def test_backsub_linear_relu(benchmark, request, impl):
    benchmark.group = "backsub_linear_relu P=32 B=128 S=9 N_out=N_in=512"
    dev = "cuda"
    P, B, S, n = 32, 128, 9, 512
    lines = [torch.randn(P, B, n, device=dev) for _ in range(4)]
    args = (torch.randn(P, B, S, n, device=dev), torch.randn(P, n, n, device=dev), torch.randn(P, n, device=dev), *lines)
    run = synced(lambda: IMPLS[impl](*args), torch.device(dev))
    run()  # compile / warm up outside the timing
    benchmark(run)
    record(benchmark, request, suite="triton_backsub_linear_relu", role="candidate" if impl == "triton" else "baseline")
