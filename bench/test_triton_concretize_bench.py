"""Benchmark: Triton concretize against the reference on the same CUDA tensors, in one group.

Run with `pytest bench/ --benchmark-only`; pytest-benchmark prints each row's ratio to the fastest in
its group. Skipped without a CUDA device: interpreter timings mean nothing.
"""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("benchmarks need a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.concretize import concretize  # noqa: E402

IMPLS = {"reference": ref.concretize, "triton": concretize}


@pytest.mark.parametrize("impl", IMPLS)
def test_concretize(benchmark, impl):
    benchmark.group = "concretize P=32 B=128 S=9 N=784"
    dev = "cuda"
    P, B, S, n = 32, 128, 9, 784
    x_lo = torch.rand(B, n, device=dev)
    args = (torch.randn(P, B, S, n, device=dev), torch.randn(P, B, S, device=dev), x_lo, x_lo + 0.1)
    fn = IMPLS[impl]

    def run():
        fn(*args)
        torch.cuda.synchronize()

    run()  # compile / warm up outside the timing
    benchmark(run)
