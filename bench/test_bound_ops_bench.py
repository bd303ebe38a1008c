"""Benchmarks of the compiled bound ops (csrc/): each op against its plain-PyTorch reference, and the
GEMM-shaped ones against torch.matmul on the same shapes (the FLOP/s ceiling), in one run.

impl: `kernel` (candidate: backend cpp on a CPU, cuda on a GPU), `reference` (baseline:
gls.reference.bound_ops) and, for backsub_linear_relu and ibp_affine, `matmul` (baseline: the bare
matmuls, no epilogue; its ratio is the kernel's fraction of matmul's FLOP/s). backsub_linear_relu_grad
times forward + backward (the kernel's closed-form backward vs autograd through the reference;
throughput counts the three GEMMs of forward and backward).

Grid (`--bench-size`): quick = MLP 784-100-100-10 shapes (B=64, S=18: 9 margins, lower and upper)
for P in 1, 16, 64, and one CNN-dense-sized step, all CPU-friendly; full adds GPU sizes (CNN7's dense
layers, P = 256), which are skipped on a CPU.
"""
from __future__ import annotations

import pytest
import torch

from gls import native, ops
from gls.reference import bound_ops as ref
from bench.harness import bench_size, measure, record

ROUNDS = {"quick": 3, "full": 10}

BACKSUB = {  # (P, B, S, N_out, N_in)
    "quick": [(1, 64, 18, 100, 100), (16, 64, 18, 100, 100), (64, 64, 18, 100, 100), (16, 64, 18, 10, 100),
              (64, 64, 18, 10, 100), (16, 16, 18, 512, 1024)],
    "full": [(256, 64, 18, 100, 100), (64, 128, 18, 512, 4096), (256, 128, 18, 512, 512)],
}
BACKSUB_GRAD = {  # (P, B, S, N_out, N_in): forward and backward (RGS back-propagates through the bounds)
    "quick": [(1, 64, 18, 100, 100), (16, 64, 18, 100, 100), (64, 64, 18, 100, 100)],
    "full": [(256, 64, 18, 100, 100), (64, 128, 18, 512, 1024)],
}
CONCRETIZE = {  # (P, B, S, N)
    "quick": [(1, 64, 18, 784), (16, 64, 18, 784), (64, 64, 18, 784)],
    "full": [(256, 128, 18, 784), (64, 128, 18, 3072)],
}
IBP = {  # (P, B, N_in, N_out, W shared)
    "quick": [(1, 64, 784, 100, False), (16, 64, 784, 100, False), (64, 64, 784, 100, False),
              (64, 64, 100, 100, False), (64, 64, 784, 100, True)],
    "full": [(256, 128, 784, 100, False), (256, 128, 4096, 512, False), (256, 128, 4096, 512, True)],
}


def _grid(table, size):
    return table["quick"] + (table["full"] if size == "full" else [])


def pytest_generate_tests(metafunc):
    size = bench_size(metafunc.config)
    for name, table, impls in (("backsub", BACKSUB, ("kernel", "reference", "matmul")),
                               ("backsub_grad", BACKSUB_GRAD, ("kernel", "reference")),
                               ("concretize", CONCRETIZE, ("kernel", "reference")),
                               ("ibp", IBP, ("kernel", "reference", "matmul"))):
        if f"{name}_case" in metafunc.fixturenames:
            params = [pytest.param(case, impl, id=f"{'-'.join(map(str, case))}-{impl}")
                      for case in _grid(table, size) for impl in impls]
            metafunc.parametrize((f"{name}_case", "impl"), params)


def _backend(device, op, case, table):
    if case in table["full"] and device.type != "cuda":
        pytest.skip("GPU-sized case (too large for a CPU run)")
    backend = "cuda" if device.type == "cuda" else "cpp"
    if not native.has_kernel(op, backend.upper() if backend == "cuda" else "CPU"):
        pytest.skip(f"gls._C has no {backend} kernel for {op}")
    return backend


def test_backsub_linear_relu(benchmark, request, device, backsub_case, impl):
    backend = _backend(device, "backsub_linear_relu", backsub_case, BACKSUB)
    P, B, S, n_out, n_in = backsub_case
    lam = torch.randn(P, B, S, n_out, device=device)
    W = torch.randn(P, n_out, n_in, device=device) / n_out ** 0.5
    b = torch.randn(P, n_out, device=device)
    lo = torch.randn(P, B, n_in, device=device)
    relax = ref.relu_relax(lo, lo + torch.rand_like(lo) * 2, "deeppoly")
    fn = {"kernel": lambda: ops.backsub_linear_relu(lam, W, b, *relax, backend=backend),
          "reference": lambda: ref.backsub_linear_relu(lam, W, b, *relax),
          "matmul": lambda: torch.matmul(lam.reshape(P, B * S, n_out), W)}[impl]
    with torch.inference_mode():
        measure(benchmark, fn, device, rounds=ROUNDS[bench_size(request.config)])
    record(benchmark, request, suite="bound_ops.backsub_linear_relu", role="candidate" if impl == "kernel" else "baseline",
           items=2 * P * B * S * n_out * n_in, unit="FLOP", backend=backend)


def test_backsub_linear_relu_grad(benchmark, request, device, backsub_grad_case, impl):
    """Forward and backward: the kernel with its closed-form backward vs autograd through the reference."""
    backend = _backend(device, "backsub_linear_relu", backsub_grad_case, BACKSUB_GRAD)
    P, B, S, n_out, n_in = backsub_grad_case
    lo = torch.randn(P, B, n_in, device=device)
    relax = [t.requires_grad_() for t in ref.relu_relax(lo, lo + torch.rand_like(lo) * 2, "deeppoly")]
    args = (torch.randn(P, B, S, n_out, device=device, requires_grad=True),
            (torch.randn(P, n_out, n_in, device=device) / n_out ** 0.5).requires_grad_(),
            torch.randn(P, n_out, device=device, requires_grad=True), *relax)
    fn = {"kernel": lambda *a: ops.backsub_linear_relu(*a, backend=backend), "reference": ref.backsub_linear_relu}[impl]

    def step():
        lam, bias = fn(*args)
        return torch.autograd.grad(lam.sum() + bias.sum(), args)

    measure(benchmark, step, device, rounds=ROUNDS[bench_size(request.config)])
    record(benchmark, request, suite="bound_ops.backsub_linear_relu_grad", role="candidate" if impl == "kernel" else "baseline",
           items=6 * P * B * S * n_out * n_in, unit="FLOP", backend=backend)


def test_concretize(benchmark, request, device, concretize_case, impl):
    backend = _backend(device, "concretize", concretize_case, CONCRETIZE)
    P, B, S, N = concretize_case
    lo = torch.randn(B, N, device=device)
    args = (torch.randn(P, B, S, N, device=device), torch.randn(P, B, S, device=device), lo, lo + 1)
    fn = {"kernel": lambda: ops.concretize(*args, backend=backend), "reference": lambda: ref.concretize(*args)}[impl]
    with torch.inference_mode():
        measure(benchmark, fn, device, rounds=ROUNDS[bench_size(request.config)])
    record(benchmark, request, suite="bound_ops.concretize", role="candidate" if impl == "kernel" else "baseline",
           items=P * B * S * N, unit="coefficient", backend=backend)


def test_ibp_affine(benchmark, request, device, ibp_case, impl):
    backend = _backend(device, "ibp_affine", ibp_case, IBP)
    P, B, n_in, n_out, shared = ibp_case
    mid, rad = torch.randn(P, B, n_in, device=device), torch.rand(P, B, n_in, device=device)
    W = torch.randn(1 if shared else P, n_out, n_in, device=device)
    b = torch.randn(W.shape[0], n_out, device=device)
    fn = {"kernel": lambda: ops.ibp_affine(mid, rad, W, b, backend=backend),
          "reference": lambda: ref.ibp_affine(mid, rad, W, b),
          "matmul": lambda: (torch.matmul(mid, W.transpose(-1, -2)), torch.matmul(rad, W.transpose(-1, -2)))}[impl]
    with torch.inference_mode():
        measure(benchmark, fn, device, rounds=ROUNDS[bench_size(request.config)])
    record(benchmark, request, suite="bound_ops.ibp_affine", role="candidate" if impl == "kernel" else "baseline",
           items=4 * P * B * n_in * n_out, unit="FLOP", backend=backend)
