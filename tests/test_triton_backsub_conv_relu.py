"""Triton backsub_conv_relu (gls_kernels/backsub_conv_relu.py) against the reference."""
import pytest
import torch

pytest.importorskip("triton")

from gls import ops  # noqa: E402
from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.backsub_conv_relu import backsub_conv_relu  # noqa: E402
from tests.conv_windows import CASES, case_id, conv_args  # noqa: E402


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_reference(case):
    args = conv_args(case)
    for got, want in zip(backsub_conv_relu(*args), ref.backsub_conv_relu(*args)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_non_contiguous_inputs_and_dispatch():
    lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation = conv_args(CASES[3])
    lam = lam.transpose(-1, -2).contiguous().transpose(-1, -2)
    a_l = a_l.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not lam.is_contiguous() and not a_l.is_contiguous()
    args = (lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation)
    got = ops.backsub_conv_relu(*args, backend="triton")
    for g, w in zip(got, ref.backsub_conv_relu(*args)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", [CASES[2], CASES[4]], ids=case_id)
def test_gradients_match_reference(case):
    args = list(conv_args(case))
    for i in range(7):
        if args[i] is not None:
            args[i] = args[i].requires_grad_(True)
    leaves = [t for t in args[:7] if t is not None]
    out = ref.backsub_conv_relu(*args)
    w_lam, w_bias = torch.randn_like(out[0]), torch.randn_like(out[1])

    def grads(fn):
        lam_next, b_out = fn(*args)
        return torch.autograd.grad((lam_next * w_lam).sum() + (b_out * w_bias).sum(), leaves)

    for g, r in zip(grads(backsub_conv_relu), grads(ref.backsub_conv_relu)):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(bias):
    op = torch.ops.gls_triton.backsub_conv_relu.default
    case = (2, 1, 2, 1, 2, 3, 2, 2, 2, (2, 2), 4, 5, (2, 1), (1, 2), bias, False)
    torch.library.opcheck(op, conv_args(case))
    args = list(conv_args(case))
    for i in range(7):
        if args[i] is not None:
            args[i] = args[i].requires_grad_(True)
    torch.library.opcheck(op, tuple(args))


def test_errors():
    case = (2, 2, 2, 3, 2, 4, 3, 2, 2, (3, 3), 6, 6, (1, 1), (1, 1), True, False)
    lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation = conv_args(case)
    rest = (origin, stride, dilation)
    with pytest.raises(ValueError, match="lam must have 6 dimensions"):
        backsub_conv_relu(lam[0], W, b, a_l, c_l, a_u, c_u, *rest)
    with pytest.raises(ValueError, match="W must have shape"):
        backsub_conv_relu(lam, W[:, :3], b, a_l, c_l, a_u, c_u, *rest)
    with pytest.raises(ValueError, match="b must have shape"):
        backsub_conv_relu(lam, W, b[:, :3], a_l, c_l, a_u, c_u, *rest)
    with pytest.raises(ValueError, match="a_l must have shape"):
        backsub_conv_relu(lam, W, b, a_l[:, :, :2], c_l, a_u, c_u, *rest)
    with pytest.raises(ValueError, match="c_u must have the shape of a_l"):
        backsub_conv_relu(lam, W, b, a_l, c_l, a_u, c_u[..., :4], *rest)
    with pytest.raises(ValueError, match="origin must be int64"):
        backsub_conv_relu(lam, W, b, a_l, c_l, a_u, c_u, origin.int(), stride, dilation)
    with pytest.raises(ValueError, match="stride must be 2 positive integers"):
        backsub_conv_relu(lam, W, b, a_l, c_l, a_u, c_u, origin, [0, 1], dilation)
    with pytest.raises(TypeError, match="W has dtype torch.float64"):
        backsub_conv_relu(lam, W.double(), b, a_l, c_l, a_u, c_u, *rest)
