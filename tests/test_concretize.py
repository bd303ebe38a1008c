"""concretize: every backend (the `backend` fixture) against the reference: odd sizes, P = 1 and
populations, empty dimensions, views, gradients, opcheck and clear errors on bad input."""
import pytest
import torch

from bound_op_cases import assert_all_close, grads, leaf_args
from gls import native
from gls.reference import bound_ops as ref

OP = "concretize"
TRITON_FLOAT32_ONLY = True


def _args(P, B, S, N, dtype=torch.float32, device="cpu"):
    lo = torch.randn(B, N, dtype=dtype, device=device)
    return (torch.randn(P, B, S, N, dtype=dtype, device=device), torch.randn(P, B, S, dtype=dtype, device=device),
            lo, lo + torch.rand(B, N, dtype=dtype, device=device))


SHAPES = [(1, 1, 1, 1), (1, 2, 3, 33), (1, 3, 2, 70), (5, 3, 2, 129), (5, 3, 4, 33), (4, 2, 18, 100), (5, 2, 40, 129),
          (2, 0, 3, 4), (0, 2, 3, 4), (2, 3, 2, 0), (2, 3, 5, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(backend, dtype, shape):
    backend.require(dtype)
    args = _args(*shape, dtype=dtype, device=backend.device)
    assert_all_close(backend(*args), ref.concretize(*args), dtype)


def test_non_contiguous_inputs(backend):
    x = _args(2, 3, 4, 5, device=backend.device)
    lo_t = x[2].t().contiguous().t()
    assert_all_close(backend(x[0], x[1], lo_t, x[3]), ref.concretize(*x), torch.float32)
    lam, bias, x_lo, x_hi = _args(3, 2, 4, 37, device=backend.device)
    lam = lam.transpose(1, 2).contiguous().transpose(1, 2)
    x_lo, x_hi = x_lo[:1].expand(2, 37), x_hi[:1].expand(2, 37)  # a box shared by the batch, as a view
    torch.testing.assert_close(backend(lam, bias, x_lo, x_hi), ref.concretize(lam, bias, x_lo, x_hi), rtol=1e-5, atol=1e-5)


def _gradient_case(device):
    return _args(3, 2, 4, 9, dtype=torch.float64, device=device)


def test_gradients_match_reference(backend):
    backend.require(torch.float64)
    args = _gradient_case(backend.device)
    for g, r in zip(grads(backend, leaf_args(args)), grads(ref.concretize, leaf_args(args))):
        torch.testing.assert_close(g, r)


def test_float32_gradients_match_reference(backend):
    args = [t.requires_grad_(True) for t in _args(3, 2, 5, 37, device=backend.device)]
    w = torch.randn(3, 2, 5, device=backend.device)

    def grads_of(fn):
        return torch.autograd.grad((fn(*args) * w).sum(), args)

    for g, r in zip(grads_of(backend), grads_of(ref.concretize)):
        torch.testing.assert_close(g, r)


def test_gradcheck_through_op(backend):
    backend.require(torch.float64)
    assert torch.autograd.gradcheck(backend, tuple(leaf_args(_args(2, 2, 2, 3, dtype=torch.float64, device=backend.device))))


def test_reference_gradcheck():
    assert torch.autograd.gradcheck(ref.concretize, tuple(leaf_args(_gradient_case("cpu"))))


def test_opcheck(backend):
    op = backend.torch_op().default
    d = backend.device
    torch.library.opcheck(op, _args(2, 3, 2, 5, device=d))
    torch.library.opcheck(op, tuple(t.requires_grad_(True) for t in _args(2, 1, 3, 4, device=d)))
    if not backend.float32_only:
        torch.library.opcheck(op, tuple(leaf_args(_gradient_case(d))))


def test_errors(backend):
    lam, bias, lo, hi = _args(2, 3, 4, 5, device=backend.device)
    if backend.name in ("cpp", "cuda-emu"):  # the same host checks (csrc/include/gls/*_checks.h)
        cases = [((lam, bias[..., :2], lo, hi), RuntimeError, "bias must have shape"),
                 ((lam, bias, lo[:2], hi), RuntimeError, "x_lo must have shape"),
                 ((lam, bias, lo, hi[:, :3]), RuntimeError, "x_hi must have the shape"),
                 ((lam, bias.double(), lo, hi), RuntimeError, "same dtype"),
                 ((lam.half(), bias.half(), lo.half(), hi.half()), RuntimeError, "float32 or float64")]
    elif backend.name == "triton":
        cases = [((lam[0], bias, lo, hi), ValueError, "lam must have 4 dimensions"),
                 ((lam, bias[:, :, :2], lo, hi), ValueError, "bias must have shape"),
                 ((lam, bias, lo, hi[:, :4]), ValueError, "x_hi must have shape"),
                 ((lam, bias, lo.double(), hi), TypeError, "x_lo has dtype torch.float64")]
    else:
        pytest.skip(f"no error table for {backend.name}")
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            backend(*args)


@pytest.mark.cuda
@pytest.mark.skipif(not native.has_kernel(OP, "CUDA"), reason="no CUDA kernels built")
def test_errors_cpu_cuda_mix():
    x = _args(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        torch.ops.gls.concretize(x[0].cuda(), *x[1:])
