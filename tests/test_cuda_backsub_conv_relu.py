"""CUDA backsub_conv_relu and backsub_conv_relu_backward (csrc/cuda/backsub_conv_relu.cu) against the reference.

Skipped without a GPU or without CUDA kernels in gls._C.
"""
import pytest
import torch

from gls import native, ops
from gls.reference import bound_ops as ref
from tests.conv_windows import CASES, case_id, conv_args

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not native.has_kernel("backsub_conv_relu", "CUDA"), reason="no CUDA kernels built"),
]

# More than one block of threads per window (C_in*h'*w' = 8*11*11) and many rows per sample.
LARGE = (2, 1, 2, 3, 40, 6, 8, 4, 4, (3, 3), 13, 12, (2, 2), (2, 2), True, False)


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _with_grad(args):
    args = list(args)
    for i in range(7):
        if args[i] is not None:
            args[i] = args[i].detach().requires_grad_(True)
    return args


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES + [LARGE], ids=case_id)
def test_forward_matches_reference(case, dtype):
    args = conv_args(case, dtype, "cuda")
    got = torch.ops.gls.backsub_conv_relu(*args)
    for g, w in zip(got, ref.backsub_conv_relu(*args)):
        assert g.shape == w.shape and g.device.type == "cuda"
        torch.testing.assert_close(g, w, **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES + [LARGE], ids=case_id)
def test_gradients_match_reference(case, dtype):
    """The op's autograd runs gls::backsub_conv_relu_backward (closed form) on CUDA."""
    args = _with_grad(conv_args(case, dtype, "cuda"))
    leaves = [t for t in args[:7] if t is not None]
    out = ref.backsub_conv_relu(*args)
    w_lam, w_bias = torch.randn_like(out[0]), torch.randn_like(out[1])

    def grads(fn):
        lam_next, bias = fn(*args)
        return torch.autograd.grad((lam_next * w_lam).sum() + (bias * w_bias).sum(), leaves)

    for g, r in zip(grads(torch.ops.gls.backsub_conv_relu), grads(ref.backsub_conv_relu)):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, **_tol(dtype))


@pytest.mark.parametrize("case", [CASES[3], CASES[5], LARGE], ids=case_id)
def test_backward_matches_cpu_kernel(case):
    """Every output of the backward op, per member, against the C++ kernel."""
    args = conv_args(case, torch.float64)
    out = ref.backsub_conv_relu(*args)
    g_lam, g_bias = torch.randn_like(out[0]), torch.randn_like(out[1])
    want = torch.ops.gls.backsub_conv_relu_backward(*args, g_lam, g_bias)
    cuda = [t.cuda() if isinstance(t, torch.Tensor) else t for t in (*args, g_lam, g_bias)]
    got = torch.ops.gls.backsub_conv_relu_backward(*cuda)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g.cpu(), w, **_tol(torch.float64))


def test_deterministic():
    args = conv_args(LARGE, torch.float32, "cuda")
    first = torch.ops.gls.backsub_conv_relu(*args)
    g_lam, g_bias = torch.randn_like(first[0]), torch.randn_like(first[1])
    back = torch.ops.gls.backsub_conv_relu_backward(*args, g_lam, g_bias)
    for _ in range(3):
        for a, b in zip(torch.ops.gls.backsub_conv_relu(*args), first):
            assert torch.equal(a, b)
        for a, b in zip(torch.ops.gls.backsub_conv_relu_backward(*args, g_lam, g_bias), back):
            assert torch.equal(a, b)


def test_default_backend_on_cuda():
    args = conv_args(CASES[2], torch.float32, "cuda")
    assert ops.resolve("backsub_conv_relu", args[0].device)[0] == "cuda"
    for g, w in zip(ops.backsub_conv_relu(*args), ref.backsub_conv_relu(*args)):
        torch.testing.assert_close(g, w, **_tol(torch.float32))


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    case = (2, 1, 2, 1, 2, 3, 2, 2, 2, (2, 2), 4, 5, (2, 1), (1, 2), bias, False)
    op = torch.ops.gls.backsub_conv_relu.default
    torch.library.opcheck(op, conv_args(case, torch.float32, "cuda"))
    torch.library.opcheck(op, tuple(_with_grad(conv_args(case, torch.float32, "cuda"))))
    args = conv_args(case, torch.float32, "cuda")
    out = ref.backsub_conv_relu(*args)
    torch.library.opcheck(torch.ops.gls.backsub_conv_relu_backward.default,
                          (*args, torch.randn_like(out[0]), torch.randn_like(out[1])))


def test_errors_cpu_cuda_mix():
    lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation = conv_args(CASES[1], torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="same CUDA device"):
        torch.ops.gls.backsub_conv_relu(lam, W.cpu(), b, a_l, c_l, a_u, c_u, origin, stride, dilation)
    with pytest.raises(RuntimeError, match="origin must be on"):
        torch.ops.gls.backsub_conv_relu(lam, W, b, a_l, c_l, a_u, c_u, origin.cpu(), stride, dilation)
