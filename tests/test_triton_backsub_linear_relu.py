"""Triton backsub_linear_relu (gls_kernels/backsub_linear_relu.py) against the reference."""
import pytest
import torch

pytest.importorskip("triton")

from gls import ops  # noqa: E402
from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels import common  # noqa: E402
from gls_kernels.backsub_linear_relu import backsub_linear_relu  # noqa: E402


def _args(P, Pw, B, S, n_out, n_in, bias=True):
    lines = [torch.randn(P, B, n_in) for _ in range(4)]  # general lines, so both c_l and c_u paths count
    return [torch.randn(P, B, S, n_out), torch.randn(Pw, n_out, n_in), torch.randn(Pw, n_out) if bias else None, *lines]


CASES = [
    # P, Pw, B, S, N_out, N_in, bias
    (1, 1, 1, 1, 1, 1, False),
    (1, 1, 3, 2, 33, 70, True),
    (5, 1, 3, 4, 33, 70, True),  # W shared by the population
    (5, 5, 2, 3, 70, 33, True),  # W per member
    (5, 5, 2, 3, 70, 33, False),
    (3, 1, 2, 3, 5, 0, True),  # no inputs: bias is lam.b alone
    (2, 2, 2, 3, 0, 5, True),  # no outputs: everything zero
    (2, 1, 0, 3, 4, 5, True),
    (0, 1, 2, 3, 4, 5, True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "P{}_Pw{}_B{}_S{}_out{}_in{}_b{}".format(*c))
def test_matches_reference(case):
    args = _args(*case)
    for got, want in zip(backsub_linear_relu(*args), ref.backsub_linear_relu(*args)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_non_contiguous_inputs_and_dispatch():
    lam, W, b, *lines = _args(3, 3, 2, 4, 20, 37)
    lam = lam.transpose(-1, -2).contiguous().transpose(-1, -2)
    W = W.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not lam.is_contiguous() and not W.is_contiguous()
    got = ops.backsub_linear_relu(lam, W, b, *lines, backend="triton")
    for g, w in zip(got, ref.backsub_linear_relu(lam, W, b, *lines)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("Pw,bias", [(1, True), (3, True), (3, False)])
def test_gradients_match_reference(Pw, bias):
    args = [t if t is None else t.requires_grad_(True) for t in _args(3, Pw, 2, 3, 19, 35, bias)]
    leaves = [t for t in args if t is not None]
    w_lam, w_bias = torch.randn(3, 2, 3, 35), torch.randn(3, 2, 3)

    def grads(fn):
        lam_next, b_out = fn(*args)
        return torch.autograd.grad((lam_next * w_lam).sum() + (b_out * w_bias).sum(), leaves)

    for g, r in zip(grads(backsub_linear_relu), grads(ref.backsub_linear_relu)):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    op = torch.ops.gls_triton.backsub_linear_relu.default
    torch.library.opcheck(op, tuple(_args(2, 1, 2, 3, 5, 7, bias)))
    grad_args = [t if t is None else t.requires_grad_(True) for t in _args(2, 2, 1, 2, 4, 6, bias)]
    torch.library.opcheck(op, tuple(grad_args))


def test_dot_precision_is_validated(monkeypatch):
    monkeypatch.setattr(common, "DOT_PRECISION", "fp8")
    with pytest.raises(ValueError, match="DOT_PRECISION='fp8'"):
        backsub_linear_relu(*_args(1, 1, 1, 1, 2, 2))


def test_errors():
    lam, W, b, a_l, c_l, a_u, c_u = _args(2, 2, 3, 4, 5, 6)
    with pytest.raises(ValueError, match="lam must have 4 dimensions"):
        backsub_linear_relu(lam[0], W, b, a_l, c_l, a_u, c_u)
    with pytest.raises(ValueError, match="W must have shape"):
        backsub_linear_relu(lam, torch.randn(2, 4, 6), b, a_l, c_l, a_u, c_u)
    with pytest.raises(ValueError, match="W must have shape"):
        backsub_linear_relu(lam, torch.randn(3, 5, 6), b, a_l, c_l, a_u, c_u)
    with pytest.raises(ValueError, match="b must have shape"):
        backsub_linear_relu(lam, W, torch.randn(2, 4), a_l, c_l, a_u, c_u)
    with pytest.raises(ValueError, match="c_u must have shape"):
        backsub_linear_relu(lam, W, b, a_l, c_l, a_u, torch.randn(2, 3, 5))
    with pytest.raises(TypeError, match="W has dtype torch.float64"):
        backsub_linear_relu(lam, W.double(), b, a_l, c_l, a_u, c_u)
