"""relu_relax: every backend against the reference, plus the reference against the relaxation's definition."""
import pytest
import torch

from gls import native, ops
from gls.reference import bound_ops as ref

METHODS = ["ibp", "hbox", "crown-ibp", "deeppoly", "crown"]


def _bounds(shape, dtype=torch.float32):
    a, b = torch.randn(shape, dtype=dtype), torch.randn(shape, dtype=dtype)
    l, u = torch.minimum(a, b), torch.maximum(a, b)
    k = min(3, l.numel())  # boundary cases l = 0, u = 0, u = -l
    l.view(-1)[:k] = torch.tensor([0.0, -1.0, -2.0], dtype=dtype)[:k]
    u.view(-1)[:k] = torch.tensor([1.0, 0.0, 2.0], dtype=dtype)[:k]
    return l, u


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 7), (5, 2, 33)])
def test_reference_is_a_sound_relaxation(method, shape):
    l, u = _bounds(shape, torch.float64)
    a_l, c_l, a_u, c_u = ref.relu_relax(l, u, method)
    t = torch.linspace(0, 1, 101, dtype=torch.float64).view(-1, *[1] * len(shape))
    z = l + t * (u - l)
    y = z.relu()
    assert (a_l * z + c_l <= y + 1e-12).all()
    assert (a_u * z + c_u >= y - 1e-12).all()
    stable = (l >= 0) | (u <= 0)
    exact = (a_l * z + c_l == y) & (a_u * z + c_u == y)
    assert exact[:, stable].all()


def _native_backends():
    out = []
    if native.has_kernel("relu_relax", "CPU"):
        out.append(("cpp", "cpu"))
    if native.has_kernel("relu_relax", "CUDA"):
        out.append(pytest.param("cuda", "cuda", marks=pytest.mark.cuda))
    return out


@pytest.mark.parametrize("backend,device", _native_backends())
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 5, 3), (7, 3, 129), (0, 2, 3)])
def test_kernel_matches_reference(backend, device, method, shape):
    l, u = (t.to(device) for t in _bounds(shape))
    got = ops.relu_relax(l, u, method, backend=backend)
    want = ref.relu_relax(l, u, method)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend,device", _native_backends())
@pytest.mark.parametrize("method", ["hbox", "deeppoly"])
def test_kernel_gradients_match_reference(backend, device, method):
    l, u = (t.to(device).double() for t in _bounds((2, 3, 17)))
    l.requires_grad_(True)
    u.requires_grad_(True)
    w = [torch.randn_like(l) for _ in range(4)]

    def grads(fn):
        out = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(fn(l, u, method), w)), (l, u), allow_unused=True)
        return [torch.zeros_like(l) if g is None else g for g in out]

    for g, r in zip(grads(lambda *a: ops.relu_relax(*a, backend=backend)), grads(ref.relu_relax)):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("method", ["hbox", "deeppoly"])
def test_reference_gradcheck(method):
    l, u = _bounds((2, 9), torch.float64)
    l, u = l[:, 3:].clone(), u[:, 3:].clone()  # away from the boundary cases, where the lines have kinks
    keep = (u - l) > 1e-2
    l, u = torch.where(keep, l, l - 0.5).requires_grad_(True), u.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ref.relu_relax(a, b, method), (l, u))


@pytest.mark.skipif(not native.has_kernel("relu_relax", "CPU"), reason="gls._C not built")
def test_opcheck():
    l, u = _bounds((2, 3, 5))
    torch.library.opcheck(torch.ops.gls.relu_relax.default, (l, u, "deeppoly"))
    torch.library.opcheck(torch.ops.gls.relu_relax.default, (l.double().requires_grad_(), u.double().requires_grad_(), "hbox"))


def test_errors():
    l = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown relaxation method"):
        ref.relu_relax(l, l, "zonotope")
    if native.has_kernel("relu_relax", "CPU"):
        with pytest.raises(RuntimeError, match="unknown method"):
            ops.relu_relax(l, l, "zonotope", backend="cpp")
        with pytest.raises(RuntimeError, match="same shape"):
            ops.relu_relax(l, torch.zeros(3, 2), "ibp", backend="cpp")


def _all_backends():
    out = [("reference", "cpu")] + [b for b in _native_backends()]
    try:
        ops.resolve("relu_relax", torch.device("cpu"), "triton")
        out.append(("triton", "cpu"))
    except RuntimeError:
        pass
    return out


@pytest.mark.parametrize("backend,device", _all_backends())
@pytest.mark.parametrize("method", ["crown-ibp", "deeppoly"])
def test_triangle_line_stays_above_relu_at_float32_extremes(backend, device, method):
    """u - l overflowing to inf gave slope 0 and offset -l * 0 = 0: the line y <= 0 for a neuron
    reaching 3e38. Now the offset is max(-l s, u (1 - s)): the box line there, and at both ends of
    every interval the line is above relu up to one float32 rounding."""
    l = torch.tensor([-3e38, -1e38, -1.0, -1e-30, -7.0, -1e30], dtype=torch.float32)
    u = torch.tensor([3e38, 3e38, 1e30, 1e30, 3.0, 1e-30], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    mag = 10.0 ** (torch.rand(2, 500, generator=gen) * 60 - 30)
    l, u = torch.cat([l, -mag[0]]), torch.cat([u, mag[1]])
    a_l, c_l, a_u, c_u = (t.double().cpu() for t in ops.relu_relax(l.to(device), u.to(device), method, backend=backend))
    L, U = l.double(), u.double()
    tol = 2.0 ** -22
    assert (a_u * U + c_u >= U * (1 - tol)).all()
    assert (a_u * L + c_u >= -tol * (L.abs() * a_u + c_u.abs())).all()
    assert (a_l * L + c_l <= 0).all() and (a_l * U + c_l <= U).all()
