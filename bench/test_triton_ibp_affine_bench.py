"""Benchmark: Triton ibp_affine against the reference on the same CUDA tensors, in one group.

Run with `pytest bench/ --benchmark-only`; bench.report lists the reference/Triton ratio
(suite triton_ibp_affine). Skipped without a CUDA device: interpreter timings mean nothing.
"""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("benchmarks need a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from bench.harness import record, synced  # noqa: E402
from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.ibp_affine import ibp_affine  # noqa: E402

IMPLS = {"reference": ref.ibp_affine, "triton": ibp_affine}


@pytest.mark.parametrize("impl", IMPLS)
def test_ibp_affine(benchmark, request, impl):
    benchmark.group = "ibp_affine P=32 B=128 N_in=N_out=512"
    dev = "cuda"
    P, B, n = 32, 128, 512
    args = (torch.randn(P, B, n, device=dev), torch.rand(P, B, n, device=dev), torch.randn(P, n, n, device=dev), torch.randn(P, n, device=dev))
    run = synced(lambda: IMPLS[impl](*args), torch.device(dev))
    run()  # compile / warm up outside the timing
    benchmark(run)
    record(benchmark, request, suite="triton_ibp_affine", role="candidate" if impl == "triton" else "baseline")
