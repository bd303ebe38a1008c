"""Benchmark: Triton concretize against the reference on the same CUDA tensors, in one group.

Run with `pytest bench/ --benchmark-only`; bench.report lists the reference/Triton ratio
(suite triton_concretize). Skipped without a CUDA device: interpreter timings mean nothing.
"""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("benchmarks need a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from bench.harness import record, synced  # noqa: E402
from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.concretize import concretize  # noqa: E402

IMPLS = {"reference": ref.concretize, "triton": concretize}


@pytest.mark.parametrize("impl", IMPLS)
def test_concretize(benchmark, request, impl):
    benchmark.group = "concretize P=32 B=128 S=9 N=784"
    dev = "cuda"
    P, B, S, n = 32, 128, 9, 784
    x_lo = torch.rand(B, n, device=dev)
    args = (torch.randn(P, B, S, n, device=dev), torch.randn(P, B, S, device=dev), x_lo, x_lo + 0.1)
    run = synced(lambda: IMPLS[impl](*args), torch.device(dev))
    run()  # compile / warm up outside the timing
    benchmark(run)
    record(benchmark, request, suite="triton_concretize", role="candidate" if impl == "triton" else "baseline")
