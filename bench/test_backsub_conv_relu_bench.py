"""backsub_conv_relu on every backend against its plain-PyTorch reference, and against the bare GEMM
(torch.matmul of the windows' columns, lam^T (R*h*w, C_out) times W (C_out, C_in*kh*kw)) that bounds
its FLOP/s, forward and forward + backward, in one run.

Shapes are the calls DeepPoly makes on cnn3 (MNIST): a refinement's first step (one-hot 1x1 windows
of conv2's 32 channels through conv2, 4x4 stride 2, onto 16 x 4 x 4 windows), its last (16 x 4 x 4
windows through conv1, 5x5 stride 2, onto 1 x 11 x 11 windows of the input box), and the final
specification's whole-map windows (32 x 7 x 7 through conv2). R = rows per (member, sample).
impl: `cpp`/`cuda`/`triton` (candidates, where they run), `reference` and `matmul` (baselines);
bench/op_backends.py runs every backend that exists here.
"""
from __future__ import annotations

import torch

from bench import op_backends
from bench.harness import measure, record

OP = "backsub_conv_relu"
CASES = {  # (P, B, R, C_out, h, w, C_in, kh, kw, H, W, stride, one-hot)
    "quick": [(1, 32, 250, 32, 1, 1, 16, 4, 4, 14, 14, 2, True), (8, 32, 250, 32, 1, 1, 16, 4, 4, 14, 14, 2, True),
              (8, 32, 250, 16, 4, 4, 1, 5, 5, 28, 28, 2, False), (8, 32, 9, 32, 7, 7, 16, 4, 4, 14, 14, 2, False)],
    "full": [(64, 64, 250, 32, 1, 1, 16, 4, 4, 14, 14, 2, True), (64, 64, 250, 16, 4, 4, 1, 5, 5, 28, 28, 2, False)],
}


def pytest_generate_tests(metafunc):
    grad = metafunc.function.__name__.endswith("_grad")
    op_backends.parametrize(metafunc, CASES, () if grad else ("matmul",))


def _inputs(case, device, requires_grad=False):
    P, B, R, co, h, w, ci, kh, kw, H, W, stride, one_hot = case
    gen = torch.Generator().manual_seed(0)
    if one_hot:  # a refinement's start: 1 at one channel of a 1x1 window
        lam = torch.zeros(P, B, R, co, h, w)
        lam.view(P * B * R, -1)[torch.arange(P * B * R), torch.randint(0, co * h * w, (P * B * R,), generator=gen)] = 1.0
    else:
        lam = torch.randn(P, B, R, co, h, w, generator=gen)
    Wt = torch.randn(P, co, ci, kh, kw, generator=gen) / (ci * kh * kw) ** 0.5
    b = torch.randn(P, co, generator=gen)
    lines = [torch.rand(P, B, ci, H, W, generator=gen) for _ in range(4)]
    origin = torch.randint(-2, max(H - 2, 1), (P, B, R, 2), generator=gen)
    tensors = [t.to(device) for t in (lam, Wt, b, *lines)]
    if requires_grad:
        tensors = [t.requires_grad_() for t in tensors]
    return (*tensors, origin.to(device), [stride, stride], [1, 1])


def _flops(case) -> int:
    P, B, R, co, h, w, ci, kh, kw = case[:9]
    return 2 * P * B * R * h * w * co * ci * kh * kw


def test_backsub_conv_relu(benchmark, request, device, case, impl, full_case):
    P, B, R, co, h, w = case[:6]
    args = _inputs(case, device)
    if impl == "matmul":  # the bare GEMM of the windows' columns: lam^T (R*h*w, C_out) times W (C_out, K)
        a = args[0].reshape(P, B * R, co, h * w).transpose(-1, -2).reshape(P, -1, co).contiguous()
        Wm = args[1].reshape(P, co, -1)
        fn = lambda: torch.bmm(a, Wm)  # noqa: E731
    else:
        kernel = op_backends.implementation(OP, impl, device, full_case)
        fn = lambda: kernel(*args)  # noqa: E731
    with torch.inference_mode():
        measure(benchmark, fn, device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=OP, role=op_backends.role(impl), items=_flops(case), unit="FLOP", backend=impl,
           note="items = dense GEMM FLOPs of the windows' columns (zeros included)")


def test_backsub_conv_relu_grad(benchmark, request, device, case, impl, full_case):
    """Forward and backward: the closed-form backward (gls/meta/backsub_conv_relu.py) vs autograd through
    the reference; throughput counts the three GEMMs of forward and backward."""
    kernel = op_backends.implementation(OP, impl, device, full_case)
    args = _inputs(case, device, requires_grad=True)
    leaves = args[:7]

    def step():
        lam, bias = kernel(*args)
        return torch.autograd.grad(lam.sum() + bias.sum(), leaves)

    measure(benchmark, step, device, rounds=op_backends.rounds(request))
    record(benchmark, request, suite=f"{OP}_grad", role=op_backends.role(impl), items=3 * _flops(case), unit="FLOP",
           backend=impl)
