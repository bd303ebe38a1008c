"""Benchmark: Triton relu_relax against the reference on the same CUDA tensors, in one group.

Run with `pytest bench/ --benchmark-only`; bench.report lists the reference/Triton ratio
(suite triton_relu_relax). Skipped without a CUDA device: interpreter timings mean nothing.
"""
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("benchmarks need a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from bench.harness import record, synced  # noqa: E402
from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.relu_relax import relu_relax  # noqa: E402

IMPLS = {"reference": ref.relu_relax, "triton": relu_relax}


@pytest.mark.parametrize("impl", IMPLS)
def test_relu_relax(benchmark, request, impl):
    benchmark.group = "relu_relax deeppoly P=64 B=128 N=1024"
    dev = "cuda"
    l = torch.randn(64, 128, 1024, device=dev)
    args = (l, l + torch.rand_like(l), "deeppoly")
    run = synced(lambda: IMPLS[impl](*args), torch.device(dev))
    run()  # compile / warm up outside the timing
    benchmark(run)
    record(benchmark, request, suite="triton_relu_relax", role="candidate" if impl == "triton" else "baseline")
