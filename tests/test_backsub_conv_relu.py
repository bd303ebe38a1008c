"""backsub_conv_relu: the reference against dense back-substitution, the C++ kernel against the reference
(forward and closed-form backward), gradcheck of the reference, opcheck of the compiled ops."""
import pytest
import torch
import torch.nn.functional as F

from gls import native, ops, windows
from gls.reference import bound_ops as ref

needs_cpp = pytest.mark.skipif(not native.has_kernel("backsub_conv_relu", "CPU"), reason="gls._C not built")

# (P, B, R, C_out, h, w, C_in, kh, kw, H, W, stride, dilation, shared W/b, bias)
SHAPES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 1, 3, 3, (1, 1), (1, 1), False, True),
    (2, 3, 4, 3, 2, 3, 2, 3, 2, 7, 6, (2, 1), (1, 2), False, True),
    (3, 2, 5, 4, 1, 1, 1, 5, 5, 9, 9, (2, 2), (1, 1), True, True),  # one-hot start, C_in = 1, shared filters
    (1, 4, 3, 2, 3, 3, 3, 2, 2, 5, 5, (1, 1), (2, 2), False, False),  # windows larger than the map, no bias
]


def _case(shape, dtype=torch.float64, seed=0, zeros=True):
    P, B, R, co, h, w, ci, kh, kw, H, W, stride, dilation, shared, bias = shape
    g = torch.Generator().manual_seed(seed)
    Pw = 1 if shared else P
    lam = torch.randn(P, B, R, co, h, w, generator=g, dtype=dtype)
    if zeros:  # exact zeros: skipped by the kernel, multiplied by the reference
        lam[..., 0, 0] = 0.0
    Wt = torch.randn(Pw, co, ci, kh, kw, generator=g, dtype=dtype)
    b = torch.randn(Pw, co, generator=g, dtype=dtype) if bias else None
    lines = [torch.randn(P, B, ci, H, W, generator=g, dtype=dtype) for _ in range(4)]
    origin = torch.randint(-4, max(H, W) - 1, (P, B, R, 2), generator=g)
    return lam, Wt, b, *lines, origin, list(stride), list(dilation)


def _dense(lam, Wt, origin, stride, dilation, H, W, padding):
    """The rows as dense maps on z_out, back through conv_transpose2d: the windows' transposed convolution."""
    P, B, R, co = lam.shape[:4]
    out = []
    for p in range(P):
        rows = lam[p].reshape(B * R, co, *lam.shape[-2:])
        out.append(F.conv_transpose2d(rows, Wt[min(p, Wt.shape[0] - 1)], stride=stride, dilation=dilation))
    return torch.stack(out).reshape(P, B, R, *out[0].shape[1:])


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_the_windowed_transposed_convolution(shape):
    args = _case(shape)
    lam, Wt, b, a_l, c_l, a_u, c_u, origin, stride, dilation = args
    got, bias = ref.backsub_conv_relu(*args)
    g = _dense(lam, Wt, origin, stride, dilation, *a_l.shape[-2:], 0)
    assert got.shape == g.shape
    size = g.shape[-2:]
    inside = windows.inside(origin, size, *a_l.shape[-2:], g.dtype)
    pos = g >= 0
    al, au = windows.gather(a_l, origin, size), windows.gather(a_u, origin, size)
    torch.testing.assert_close(got, g * torch.where(pos, al, au) * inside)
    cl, cu = windows.gather(c_l, origin, size), windows.gather(c_u, origin, size)
    want = (g * torch.where(pos, cl, cu)).sum((-3, -2, -1))
    if b is not None:
        want = want + (lam.sum((-2, -1)) * b[:, None, None, :]).sum(-1)
    torch.testing.assert_close(bias, want)


def test_windows_gather_and_scatter_are_inverse_inside_the_map():
    maps = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    origin = torch.tensor([[[[-2, 1], [3, 4]]] * 3] * 2)
    win = windows.gather(maps, origin, (4, 3))
    assert win.shape == (2, 3, 2, 4, 4, 3)
    torch.testing.assert_close(win[0, 1, 0, :, 2:, :], maps[0, 1, :, 0:2, 1:4])  # rows 2.. of the window are rows 0..
    assert (win[0, 1, 0, :, :2] == 0).all()  # above the map
    dense = windows.scatter(win, origin, 5, 6)
    inside = windows.scatter(windows.inside(origin, (4, 3), 5, 6, maps.dtype).expand_as(win), origin, 5, 6)
    torch.testing.assert_close(dense, maps.unsqueeze(2) * inside)


@pytest.mark.parametrize("shape", SHAPES)
def test_gradcheck_reference(shape):
    lam, Wt, b, a_l, c_l, a_u, c_u, origin, stride, dilation = _case(shape, zeros=False)  # no g == 0 kinks
    tensors = [t.requires_grad_(True) for t in (lam, Wt, a_l, c_l, a_u, c_u) + ((b,) if b is not None else ())]

    def f(lam, Wt, a_l, c_l, a_u, c_u, *bias):
        return ref.backsub_conv_relu(lam, Wt, bias[0] if bias else None, a_l, c_l, a_u, c_u, origin, stride, dilation)

    assert torch.autograd.gradcheck(f, tensors)


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_cpp_matches_reference(shape, dtype):
    args = _case(shape, dtype)
    want = ref.backsub_conv_relu(*args)
    got = ops.backsub_conv_relu(*args, backend="cpp")
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol)


@needs_cpp
@pytest.mark.parametrize("shape", SHAPES)
def test_cpp_backward_matches_reference(shape):
    args = list(_case(shape))
    idx = [i for i in range(7) if args[i] is not None]

    def grads(fn):
        leaves = [a.clone().requires_grad_(True) if i in idx else a for i, a in enumerate(args)]
        out = fn(*leaves)
        gen = torch.Generator().manual_seed(1)
        ups = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in out]
        return torch.autograd.grad(out, [leaves[i] for i in idx], ups)

    for g, w in zip(grads(lambda *a: ops.backsub_conv_relu(*a, backend="cpp")), grads(ref.backsub_conv_relu)):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


@needs_cpp
@pytest.mark.parametrize("shape", SHAPES[1:3])
def test_opcheck(shape):
    args = list(_case(shape))
    for i in range(7):
        if args[i] is not None:
            args[i].requires_grad_(True)
    torch.library.opcheck(torch.ops.gls.backsub_conv_relu.default, tuple(args))
    lam, Wt, b, a_l, c_l, a_u, c_u, origin, stride, dilation = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    out, bias = ref.backsub_conv_relu(lam, Wt, b, a_l, c_l, a_u, c_u, origin, stride, dilation)
    torch.library.opcheck(torch.ops.gls.backsub_conv_relu_backward.default,
                          (lam, Wt, b, a_l, c_l, a_u, c_u, origin, stride, dilation, torch.randn_like(out),
                           torch.randn_like(bias)))


@needs_cpp
def test_bad_input_names_the_problem():
    lam, Wt, b, a_l, c_l, a_u, c_u, origin, stride, dilation = _case(SHAPES[1])
    with pytest.raises(RuntimeError, match="origin must be int64"):
        torch.ops.gls.backsub_conv_relu(lam, Wt, b, a_l, c_l, a_u, c_u, origin.double(), stride, dilation)
    with pytest.raises(RuntimeError, match="W must have C_out"):
        torch.ops.gls.backsub_conv_relu(lam, Wt[:, :1], b, a_l, c_l, a_u, c_u, origin, stride, dilation)
    with pytest.raises(RuntimeError, match="stride and dilation must be positive"):
        torch.ops.gls.backsub_conv_relu(lam, Wt, b, a_l, c_l, a_u, c_u, origin, [0, 1], dilation)
