"""Triton relu_relax (gls_kernels/relu_relax.py) against the reference: values, gradients, opcheck, errors."""
import pytest
import torch

pytest.importorskip("triton")

from gls import ops  # noqa: E402
from gls.reference import bound_ops as ref  # noqa: E402
from gls_kernels.relu_relax import relu_relax  # noqa: E402

METHODS = ["ibp", "hbox", "crown-ibp", "deeppoly", "crown"]


def _bounds(shape):
    a, b = torch.randn(shape), torch.randn(shape)
    l, u = torch.minimum(a, b), torch.maximum(a, b)
    k = min(3, l.numel())  # boundary cases l = 0, u = 0, u = -l
    l.view(-1)[:k] = torch.tensor([0.0, -1.0, -2.0])[:k]
    u.view(-1)[:k] = torch.tensor([1.0, 0.0, 2.0])[:k]
    return l, u


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(1,), (3, 7), (5, 2, 33), (1, 1, 129), (0, 3)])
def test_matches_reference(method, shape):
    l, u = _bounds(shape)
    for got, want in zip(relu_relax(l, u, method), ref.relu_relax(l, u, method)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_non_contiguous_inputs_and_dispatch():
    l, u = _bounds((33, 5))
    got = ops.relu_relax(l.t(), u.t(), "deeppoly", backend="triton")
    for g, w in zip(got, ref.relu_relax(l.t(), u.t(), "deeppoly")):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("method", ["hbox", "deeppoly"])
def test_gradients_match_reference(method):
    l, u = _bounds((2, 3, 17))
    l.requires_grad_(True)
    u.requires_grad_(True)
    w = [torch.randn_like(l) for _ in range(4)]

    def grads(fn):
        out = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(fn(l, u, method), w)), (l, u), allow_unused=True)
        return [torch.zeros_like(l) if g is None else g for g in out]

    for g, r in zip(grads(relu_relax), grads(ref.relu_relax)):
        torch.testing.assert_close(g, r)


def test_opcheck():
    l, u = _bounds((2, 3, 5))
    torch.library.opcheck(torch.ops.gls_triton.relu_relax.default, (l, u, "deeppoly"))
    torch.library.opcheck(torch.ops.gls_triton.relu_relax.default, (l.requires_grad_(), u.requires_grad_(), "hbox"))


def test_errors():
    l = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown relaxation method"):
        relu_relax(l, l, "zonotope")
    with pytest.raises(ValueError, match="same shape"):
        relu_relax(l, torch.zeros(3, 2), "ibp")
    with pytest.raises(TypeError, match="float64"):
        relu_relax(l.double(), l.double(), "ibp")
    with pytest.raises(TypeError, match="u has dtype torch.float16"):
        relu_relax(l, l.half(), "ibp")
