"""Triton ibp_affine (gls_kernels/ibp_affine.py) against the reference."""
import pytest
import torch

pytest.importorskip("triton")

from gls import ops  # noqa: E402
from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.ibp_affine import ibp_affine  # noqa: E402


def _args(Px, Pw, Pb, B, n_in, n_out):
    """Pb None: no bias."""
    return [torch.randn(Px, B, n_in), torch.rand(Px, B, n_in), torch.randn(Pw, n_out, n_in), None if Pb is None else torch.randn(Pb, n_out)]


CASES = [
    # P of mid/rad, P of W, P of b, B, N_in, N_out
    (1, 1, None, 1, 1, 1),
    (1, 1, 1, 3, 33, 70),
    (1, 5, 5, 3, 33, 70),  # input shared, weights per member (the first layer of a population pass)
    (5, 1, 1, 70, 33, 3),  # weights shared
    (5, 5, 1, 3, 70, 33),  # bias shared
    (5, 5, None, 33, 129, 3),
    (2, 2, 2, 3, 0, 4),  # no inputs: mid is b, rad is 0
    (2, 2, 2, 0, 3, 4),
    (2, 2, 2, 3, 4, 0),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "Px{}_Pw{}_Pb{}_B{}_in{}_out{}".format(*c))
def test_matches_reference(case):
    args = _args(*case)
    for got, want in zip(ibp_affine(*args), ref.ibp_affine(*args)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs_and_dispatch():
    mid, rad, W, b = _args(3, 3, 3, 4, 37, 20)
    W = W.transpose(-1, -2).contiguous().transpose(-1, -2)
    mid = mid.transpose(0, 1).contiguous().transpose(0, 1)
    got = ops.ibp_affine(mid, rad, W, b, backend="triton")
    for g, w in zip(got, ref.ibp_affine(mid, rad, W, b)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("Px,Pw,Pb", [(1, 3, 3), (3, 1, 1), (3, 3, None)])
def test_gradients_match_reference(Px, Pw, Pb):
    args = [t if t is None else t.requires_grad_(True) for t in _args(Px, Pw, Pb, 5, 35, 19)]
    leaves = [t for t in args if t is not None]
    w_mid, w_rad = torch.randn(3, 5, 19), torch.randn(3, 5, 19)

    def grads(fn):
        mid, rad = fn(*args)
        return torch.autograd.grad((mid * w_mid).sum() + (rad * w_rad).sum(), leaves)

    for g, r in zip(grads(ibp_affine), grads(ref.ibp_affine)):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_opcheck():
    op = torch.ops.gls_triton.ibp_affine.default
    torch.library.opcheck(op, tuple(_args(1, 2, 2, 3, 5, 4)))
    torch.library.opcheck(op, tuple(_args(2, 2, None, 3, 5, 4)))
    torch.library.opcheck(op, tuple(t.requires_grad_(True) for t in _args(2, 1, 1, 3, 5, 4)))


def test_errors():
    mid, rad, W, b = _args(2, 2, 2, 3, 5, 4)
    with pytest.raises(ValueError, match="mid and rad must have the same shape"):
        ibp_affine(mid, rad[:1], W, b)
    with pytest.raises(ValueError, match="W has N_in=6 columns"):
        ibp_affine(mid, rad, torch.randn(2, 4, 6), b)
    with pytest.raises(ValueError, match="population sizes"):
        ibp_affine(mid, rad, torch.randn(3, 4, 5), b)
    with pytest.raises(ValueError, match="b must have shape"):
        ibp_affine(mid[:1], rad[:1], W[:1], b)  # per-member b with everything else shared
    with pytest.raises(ValueError, match="W must have 3 dimensions"):
        ibp_affine(mid, rad, W[0], b)
    with pytest.raises(TypeError, match="mid has dtype torch.float64"):
        ibp_affine(mid.double(), rad.double(), W.double(), b.double())
