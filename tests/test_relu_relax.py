"""relu_relax: every backend (the `backend` fixture) against the reference, plus the reference against the
relaxation's definition: values, gradients, opcheck, errors."""
import pytest
import torch

from conftest import backend_params
from gls.reference import bound_ops as ref

OP = "relu_relax"
TRITON_FLOAT32_ONLY = True
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


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("shape", [(1,), (3, 7), (1, 1, 1), (1, 5, 3), (5, 2, 33), (1, 1, 129), (7, 3, 129), (0, 3), (0, 2, 3)])
def test_matches_reference(backend, method, shape):
    l, u = (t.to(backend.device) for t in _bounds(shape))
    got = backend(l, u, method)
    for g, w in zip(got, ref.relu_relax(l, u, method)):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


def test_non_contiguous_inputs(backend):
    l, u = (t.to(backend.device) for t in _bounds((33, 5)))
    got = backend(l.t(), u.t(), "deeppoly")
    for g, w in zip(got, ref.relu_relax(l.t(), u.t(), "deeppoly")):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", METHODS)
def test_gradients_match_reference(backend, dtype, method):
    """The closed-form backward (gls/meta/relu_relax.py) against the reference's autograd, boundary
    cases (l = 0, u = 0, u = -l) included."""
    backend.require(dtype)
    l, u = (t.to(backend.device, dtype) for t in _bounds((2, 3, 17)))
    l.requires_grad_(True)
    u.requires_grad_(True)
    w = [torch.randn_like(l) for _ in range(4)]

    def grads(fn):
        out = torch.autograd.grad(sum((o * wi).sum() for o, wi in zip(fn(l, u, method), w)), (l, u), allow_unused=True)
        return [torch.zeros_like(l) if g is None else g for g in out]

    for g, r in zip(grads(backend), grads(ref.relu_relax)):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("method", ["hbox", "deeppoly"])
def test_reference_gradcheck(method):
    l, u = _bounds((2, 9), torch.float64)
    l, u = l[:, 3:].clone(), u[:, 3:].clone()  # away from the boundary cases, where the lines have kinks
    keep = (u - l) > 1e-2
    l, u = torch.where(keep, l, l - 0.5).requires_grad_(True), u.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: ref.relu_relax(a, b, method), (l, u))


def test_opcheck(backend):
    op = backend.torch_op().default
    l, u = (t.to(backend.device) for t in _bounds((2, 3, 5)))
    torch.library.opcheck(op, (l, u, "deeppoly"))
    grad_dtype = torch.float32 if backend.float32_only else torch.float64
    torch.library.opcheck(op, (l.to(grad_dtype).requires_grad_(), u.to(grad_dtype).requires_grad_(), "hbox"))


def test_reference_errors():
    l = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="unknown relaxation method"):
        ref.relu_relax(l, l, "zonotope")


def _error_cases(backend):
    """(arguments, exception, message) that backend must refuse; None: no table for it."""
    def z(*shape, dtype=torch.float32):
        return torch.zeros(shape, dtype=dtype, device=backend.device)

    if backend.name in ("cpp", "cuda-emu"):  # the same host checks (csrc/include/gls/*_checks.h)
        return [((z(2, 3), z(2, 3), "zonotope"), RuntimeError, "unknown method"),
                ((z(2, 3), z(3, 2), "ibp"), RuntimeError, "same shape")]
    if backend.name == "triton":
        return [((z(2, 3), z(2, 3), "zonotope"), ValueError, "unknown relaxation method"),
                ((z(2, 3), z(3, 2), "ibp"), ValueError, "same shape"),
                ((z(2, 3, dtype=torch.float64), z(2, 3, dtype=torch.float64), "ibp"), TypeError, "float64"),
                ((z(2, 3), z(2, 3, dtype=torch.float16), "ibp"), TypeError, "u has dtype torch.float16")]
    return None


def test_errors(backend):
    cases = _error_cases(backend)
    if cases is None:
        pytest.skip(f"no error table for {backend.name}")
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            backend(*args)


@pytest.mark.with_reference
@pytest.mark.parametrize("method", ["crown-ibp", "deeppoly"])
def test_triangle_line_stays_above_relu_at_float32_extremes(backend, method):
    """u - l overflowing to inf gave slope 0 and offset -l * 0 = 0: the line y <= 0 for a neuron
    reaching 3e38. Now the offset is max(-l s, u (1 - s)): the box line there, and at both ends of
    every interval the line is above relu up to one float32 rounding."""
    l = torch.tensor([-3e38, -1e38, -1.0, -1e-30, -7.0, -1e30], dtype=torch.float32)
    u = torch.tensor([3e38, 3e38, 1e30, 1e30, 3.0, 1e-30], dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    mag = 10.0 ** (torch.rand(2, 500, generator=gen) * 60 - 30)
    l, u = torch.cat([l, -mag[0]]), torch.cat([u, mag[1]])
    a_l, c_l, a_u, c_u = (t.double().cpu() for t in backend(l.to(backend.device), u.to(backend.device), method))
    L, U = l.double(), u.double()
    tol = 2.0 ** -22
    assert (a_u * U + c_u >= U * (1 - tol)).all()
    assert (a_u * L + c_u >= -tol * (L.abs() * a_u + c_u.abs())).all()
    assert (a_l * L + c_l <= 0).all() and (a_l * U + c_l <= U).all()


@pytest.mark.parametrize("cuda_backend", [p for p in backend_params(OP) if p.id in ("cuda", "cuda-emu")])
def test_grid_stride_loop_past_the_grid_cap(cuda_backend):
    """The CUDA kernel caps its grid at 65535 blocks of 256 threads and strides over the rest: one more
    element than that cap (and a ragged tail) still gets its lines."""
    n = 65535 * 256 + 37
    gen = torch.Generator().manual_seed(5)
    a, b = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    l, u = torch.minimum(a, b), torch.maximum(a, b)
    got = cuda_backend(l.to(cuda_backend.device), u.to(cuda_backend.device), "deeppoly")
    for g, w in zip(got, ref.relu_relax(l, u, "deeppoly")):
        torch.testing.assert_close(g.cpu(), w, rtol=1e-6, atol=1e-7)
