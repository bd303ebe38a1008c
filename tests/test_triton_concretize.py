"""Triton concretize (gls_kernels/concretize.py) against the reference."""
import pytest
import torch

pytest.importorskip("triton")

from gls import ops  # noqa: E402
from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.concretize import concretize  # noqa: E402


def _args(P, B, S, N):
    x_lo = torch.randn(B, N)
    return [torch.randn(P, B, S, N), torch.randn(P, B, S), x_lo, x_lo + torch.rand(B, N)]


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 3, 2, 70), (5, 3, 4, 33), (5, 2, 40, 129), (2, 3, 5, 0), (0, 2, 3, 4), (2, 0, 3, 4)])
def test_matches_reference(shape):
    args = _args(*shape)
    got, want = concretize(*args), ref.concretize(*args)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs_and_dispatch():
    lam, bias, x_lo, x_hi = _args(3, 2, 4, 37)
    lam = lam.transpose(1, 2).contiguous().transpose(1, 2)
    x_lo, x_hi = x_lo[:1].expand(2, 37), x_hi[:1].expand(2, 37)  # a box shared by the batch, as a view
    got = ops.concretize(lam, bias, x_lo, x_hi, backend="triton")
    torch.testing.assert_close(got, ref.concretize(lam, bias, x_lo, x_hi), rtol=1e-5, atol=1e-5)


def test_gradients_match_reference():
    args = [t.requires_grad_(True) for t in _args(3, 2, 5, 37)]
    w = torch.randn(3, 2, 5)

    def grads(fn):
        return torch.autograd.grad((fn(*args) * w).sum(), args)

    for g, r in zip(grads(concretize), grads(ref.concretize)):
        torch.testing.assert_close(g, r)


def test_opcheck():
    op = torch.ops.gls_triton.concretize.default
    torch.library.opcheck(op, tuple(_args(2, 3, 2, 5)))
    torch.library.opcheck(op, tuple(t.requires_grad_(True) for t in _args(2, 1, 3, 4)))


def test_errors():
    lam, bias, x_lo, x_hi = _args(2, 3, 4, 5)
    with pytest.raises(ValueError, match="lam must have 4 dimensions"):
        concretize(lam[0], bias, x_lo, x_hi)
    with pytest.raises(ValueError, match="bias must have shape"):
        concretize(lam, bias[:, :, :2], x_lo, x_hi)
    with pytest.raises(ValueError, match="x_hi must have shape"):
        concretize(lam, bias, x_lo, x_hi[:, :4])
    with pytest.raises(TypeError, match="x_lo has dtype torch.float64"):
        concretize(lam, bias, x_lo.double(), x_hi)
