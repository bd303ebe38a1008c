"""Benchmark: Triton relu_relax against the reference on the same CUDA tensors, in one group.

Run with `pytest bench/ --benchmark-only`; pytest-benchmark prints each row's ratio to the fastest in
its group. Skipped without a CUDA device: interpreter timings mean nothing.
"""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("benchmarks need a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.relu_relax import relu_relax  # noqa: E402

IMPLS = {"reference": ref.relu_relax, "triton": relu_relax}


@pytest.mark.parametrize("impl", IMPLS)
def test_relu_relax(benchmark, impl):
    benchmark.group = "relu_relax deeppoly P=64 B=128 N=1024"
    dev = "cuda"
    l = torch.randn(64, 128, 1024, device=dev)
    args = (l, l + torch.rand_like(l), "deeppoly")
    fn = IMPLS[impl]

    def run():
        fn(*args)
        torch.cuda.synchronize()

    run()  # compile / warm up outside the timing
    benchmark(run)
