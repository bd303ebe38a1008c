"""backsub_linear_relu, concretize and ibp_affine: every compiled backend against the reference.

Odd sizes (not multiples of any tile), P = 1 and populations, shared (P=1) weights, biases and inputs,
b = None, empty dimensions; gradients against the reference, gradcheck through the ops, opcheck, and
clear errors on bad input.
"""
import pytest
import torch

from gls import native, ops
from gls.meta import backsub_linear_relu as backsub_meta
from gls.reference import bound_ops as ref

OPS = ("backsub_linear_relu", "concretize", "ibp_affine")


def _backends(op):
    out = []
    if native.has_kernel(op, "CPU"):
        out.append(("cpp", "cpu"))
    if native.has_kernel(op, "CUDA"):
        out.append(pytest.param("cuda", "cuda", marks=pytest.mark.cuda))
    return out


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


def _relaxation(members, B, n, dtype, device):
    """ReLU lines of random pre-activation bounds (all cases: active, inactive, unstable)."""
    a, b = torch.randn(members, B, n, dtype=dtype), torch.randn(members, B, n, dtype=dtype)
    return [t.to(device) for t in ref.relu_relax(torch.minimum(a, b), torch.maximum(a, b), "deeppoly")]


def _backsub_args(P, B, S, n_out, n_in, *, w_members, b_members, r_members, dtype=torch.float32, device="cpu"):
    lam = torch.randn(P, B, S, n_out, dtype=dtype, device=device)
    W = torch.randn(w_members, n_out, n_in, dtype=dtype, device=device) / max(n_out, 1) ** 0.5
    b = None if b_members is None else torch.randn(b_members, n_out, dtype=dtype, device=device)
    return (lam, W, b, *_relaxation(r_members, B, n_in, dtype, device))


def _ibp_args(members, B, n_in, n_out, with_b, dtype=torch.float32, device="cpu"):
    pm, pr, pw, pb = members
    mid = torch.randn(pm, B, n_in, dtype=dtype, device=device)
    rad = torch.rand(pr, B, n_in, dtype=dtype, device=device)
    W = torch.randn(pw, n_out, n_in, dtype=dtype, device=device)
    b = torch.randn(pb, n_out, dtype=dtype, device=device) if with_b else None
    return mid, rad, W, b


def _concretize_args(P, B, S, N, dtype=torch.float32, device="cpu"):
    lo = torch.randn(B, N, dtype=dtype, device=device)
    return (torch.randn(P, B, S, N, dtype=dtype, device=device), torch.randn(P, B, S, dtype=dtype, device=device),
            lo, lo + torch.rand(B, N, dtype=dtype, device=device))


def _assert_all_close(got, want, dtype):
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, **_tol(dtype))


# ---- forward against the reference ---------------------------------------------------------------

BACKSUB_SHAPES = [  # P, B, S, N_out, N_in
    (1, 1, 1, 1, 1),
    (1, 2, 3, 33, 129),
    (5, 3, 2, 17, 3),
    (4, 2, 18, 10, 100),
    (3, 1, 1, 129, 33),
    (2, 0, 3, 4, 5),  # zero rows
    (2, 3, 0, 4, 5),
    (0, 3, 2, 4, 5),
    (2, 3, 2, 0, 5),  # empty contraction
    (2, 3, 2, 4, 0),  # no inputs: only lam.b remains
]


@pytest.mark.parametrize("backend,device", _backends("backsub_linear_relu"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", BACKSUB_SHAPES)
@pytest.mark.parametrize("sharing", ["per-member", "shared-W", "shared-all", "no-b"])
def test_backsub_matches_reference(backend, device, dtype, shape, sharing):
    P = shape[0]
    w_m, b_m, r_m = {"per-member": (P, P, P), "shared-W": (1, P, P), "shared-all": (1, 1, 1), "no-b": (P, None, P)}[sharing]
    args = _backsub_args(*shape, w_members=w_m, b_members=b_m, r_members=r_m, dtype=dtype, device=device)
    _assert_all_close(ops.backsub_linear_relu(*args, backend=backend), ref.backsub_linear_relu(*args), dtype)


@pytest.mark.parametrize("backend,device", _backends("backsub_linear_relu"))
def test_backsub_member_matches_single(backend, device):
    """A member inside a population gets the numbers it gets alone (P = 1)."""
    lam, W, b, *relax = _backsub_args(6, 3, 5, 33, 65, w_members=6, b_members=6, r_members=6, device=device)
    full = ops.backsub_linear_relu(lam, W, b, *relax, backend=backend)
    for p in (0, 4):
        one = ops.backsub_linear_relu(lam[p : p + 1], W[p : p + 1], b[p : p + 1], *(t[p : p + 1] for t in relax), backend=backend)
        for f, o in zip(full, one):
            torch.testing.assert_close(f[p : p + 1], o, rtol=1e-6, atol=1e-6)


CONCRETIZE_SHAPES = [(1, 1, 1, 1), (1, 2, 3, 33), (5, 3, 2, 129), (4, 2, 18, 100), (2, 0, 3, 4), (0, 2, 3, 4), (2, 3, 2, 0)]


@pytest.mark.parametrize("backend,device", _backends("concretize"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", CONCRETIZE_SHAPES)
def test_concretize_matches_reference(backend, device, dtype, shape):
    args = _concretize_args(*shape, dtype=dtype, device=device)
    _assert_all_close(ops.concretize(*args, backend=backend), ref.concretize(*args), dtype)


IBP_SHAPES = [(1, 1, 1), (2, 33, 129), (3, 129, 3), (64, 100, 10), (0, 3, 4), (3, 0, 4), (3, 4, 0)]  # B, N_in, N_out
IBP_MEMBERS = [(1, 1, 1, 1), (4, 4, 4, 4), (4, 4, 1, 1), (1, 1, 3, 3), (4, 1, 4, 1), (1, 3, 1, 1), (1, 1, 1, 2), (0, 0, 1, 1)]


@pytest.mark.parametrize("backend,device", _backends("ibp_affine"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", IBP_SHAPES)
@pytest.mark.parametrize("members", IBP_MEMBERS)
@pytest.mark.parametrize("with_b", [True, False])
def test_ibp_affine_matches_reference(backend, device, dtype, shape, members, with_b):
    args = _ibp_args(members, *shape, with_b, dtype=dtype, device=device)
    _assert_all_close(ops.ibp_affine(*args, backend=backend), _ibp_joint(*args), dtype)


def _ibp_joint(*args):
    """The reference's outputs on their joint population axis (kernels give mid and rad the same P)."""
    return tuple(torch.broadcast_tensors(*ref.ibp_affine(*args)))


@pytest.mark.parametrize("backend,device", _backends("backsub_linear_relu"))
def test_non_contiguous_inputs(backend, device):
    lam, W, b, *relax = _backsub_args(3, 2, 4, 7, 9, w_members=3, b_members=3, r_members=3, device=device)
    lam_t = lam.transpose(1, 2).contiguous().transpose(1, 2)
    W_t = W.transpose(1, 2).contiguous().transpose(1, 2)
    assert not lam_t.is_contiguous() and not W_t.is_contiguous()
    _assert_all_close(ops.backsub_linear_relu(lam_t, W_t, b, *relax, backend=backend), ref.backsub_linear_relu(lam, W, b, *relax), torch.float32)
    x = _concretize_args(2, 3, 4, 5, device=device)
    lo_t = x[2].t().contiguous().t()
    _assert_all_close(ops.concretize(x[0], x[1], lo_t, x[3], backend=backend), ref.concretize(*x), torch.float32)
    mid, rad, Wi, bi = _ibp_args((2, 2, 2, 2), 3, 5, 4, True, device=device)
    Wi_t = Wi.transpose(1, 2).contiguous().transpose(1, 2)
    _assert_all_close(ops.ibp_affine(mid, rad, Wi_t, bi, backend=backend), _ibp_joint(mid, rad, Wi, bi), torch.float32)


# ---- gradients ------------------------------------------------------------------------------------

def _grads(fn, args):
    leaves = [a for a in args if isinstance(a, torch.Tensor)]
    out = fn(*args)
    out = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator(device=out[0].device).manual_seed(1)
    loss = sum((o * torch.randn(o.shape, dtype=o.dtype, device=o.device, generator=gen)).sum() for o in out)
    got = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, got)]


def _leaf_args(args):
    return [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]


def _gradient_cases(device):
    d = dict(dtype=torch.float64, device=device)
    return {
        "backsub_linear_relu": _backsub_args(3, 2, 4, 7, 9, w_members=1, b_members=3, r_members=3, **d),
        "concretize": _concretize_args(3, 2, 4, 9, **d),
        "ibp_affine": _ibp_args((3, 3, 1, 1), 2, 7, 5, True, **d),
    }


REFERENCE = {"backsub_linear_relu": ref.backsub_linear_relu, "concretize": ref.concretize, "ibp_affine": _ibp_joint}


@pytest.mark.parametrize("backend,device", _backends("backsub_linear_relu"))
@pytest.mark.parametrize("members", [(3, 3, 3), (1, 1, 1), (3, None, 1)])  # W, b, relaxation
def test_backsub_gradients_match_reference(backend, device, members):
    """The closed-form backward against autograd through the reference, shared inputs and g == 0 included."""
    w_m, b_m, r_m = members
    args = _backsub_args(3, 2, 4, 7, 9, w_members=w_m, b_members=b_m, r_members=r_m, dtype=torch.float64, device=device)
    args[0][1, 1, 2] = 0  # a zero row of lam: g == 0 exactly, where the reference's clamps pass no gradient
    kernel = lambda *a: ops.backsub_linear_relu(*a, backend=backend)  # noqa: E731
    for g, r in zip(_grads(kernel, _leaf_args(args)), _grads(ref.backsub_linear_relu, _leaf_args(args))):
        torch.testing.assert_close(g, r)
    only_bias = lambda *a: kernel(*a)[1]  # noqa: E731  (an unused output: its gradient arrives as None)
    for g, r in zip(_grads(only_bias, _leaf_args(args)), _grads(lambda *a: ref.backsub_linear_relu(*a)[1], _leaf_args(args))):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("backend,device", _backends("backsub_linear_relu_backward"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (3, 2, 5, 33, 17), (2, 3, 1, 129, 65), (2, 3, 0, 4, 5), (2, 3, 2, 0, 5), (0, 2, 2, 3, 4)])
@pytest.mark.parametrize("members", [(None, None), (1, 1)])  # W, relaxation: per member / shared
def test_backsub_backward_kernel_matches_torch(backend, device, dtype, shape, members):
    """The fused backward epilogue against the same formulas in torch ops (its double-backward path)."""
    P = shape[0]
    w_m, r_m = (m if m is not None else P for m in members)
    lam, W, _, *relax = _backsub_args(*shape, w_members=w_m, b_members=None, r_members=r_m, dtype=dtype, device=device)
    lam[..., :1, :] = 0  # g == 0 rows
    g_lam = torch.randn(*shape[:3], shape[4], dtype=dtype, device=device)
    g_bias = torch.randn(shape[:3], dtype=dtype, device=device)
    got = torch.ops.gls.backsub_linear_relu_backward(lam, W, g_lam, g_bias, *relax)
    want = backsub_meta.epilogue_torch(lam, W, g_lam, g_bias, *relax)
    _assert_all_close(tuple(got), tuple(want), dtype)


@pytest.mark.parametrize("backend,device", _backends("backsub_linear_relu"))
def test_backsub_double_backward(backend, device):
    args = _backsub_args(2, 2, 2, 3, 4, w_members=2, b_members=2, r_members=2, dtype=torch.float64, device=device)
    fn = lambda *a: ops.backsub_linear_relu(*a, backend=backend)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, tuple(_leaf_args(args)))


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", _backends("backsub_linear_relu"))
def test_gradients_match_reference(op, backend, device):
    args = _gradient_cases(device)[op]
    kernel = lambda *a: getattr(ops, op)(*a, backend=backend)  # noqa: E731
    for g, r in zip(_grads(kernel, _leaf_args(args)), _grads(REFERENCE[op], _leaf_args(args))):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend,device", _backends("backsub_linear_relu"))
def test_gradcheck_through_op(op, backend, device):
    small = {"backsub_linear_relu": _backsub_args(2, 2, 2, 3, 4, w_members=2, b_members=1, r_members=2, dtype=torch.float64, device=device),
             "concretize": _concretize_args(2, 2, 2, 3, dtype=torch.float64, device=device),
             "ibp_affine": _ibp_args((2, 1, 1, 2), 2, 3, 4, True, dtype=torch.float64, device=device)}[op]
    fn = lambda *a: getattr(ops, op)(*a, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(_leaf_args(small)))


@pytest.mark.parametrize("op", OPS)
def test_reference_gradcheck(op):
    args = _gradient_cases("cpu")[op]
    assert torch.autograd.gradcheck(getattr(ref, op), tuple(_leaf_args(args)))


@pytest.mark.skipif(not native.has_kernel("backsub_linear_relu", "CPU"), reason="gls._C not built")
@pytest.mark.parametrize("op", OPS)
def test_opcheck(op):
    f32 = {"backsub_linear_relu": _backsub_args(2, 3, 2, 5, 7, w_members=1, b_members=2, r_members=2),
           "concretize": _concretize_args(2, 3, 2, 5),
           "ibp_affine": _ibp_args((2, 2, 1, 1), 3, 5, 4, True)}[op]
    torch.library.opcheck(getattr(torch.ops.gls, op).default, tuple(f32))
    f64 = _leaf_args(_gradient_cases("cpu")[op])
    torch.library.opcheck(getattr(torch.ops.gls, op).default, tuple(f64))
    if op == "backsub_linear_relu":
        lam, W, _, *relax = f64
        grads = (torch.randn(*lam.shape[:3], W.shape[-1], dtype=lam.dtype), torch.randn(lam.shape[:3], dtype=lam.dtype))
        torch.library.opcheck(torch.ops.gls.backsub_linear_relu_backward.default, (lam.detach(), W.detach(), *grads, *(r.detach() for r in relax)))
    if op != "concretize":  # b = None
        no_b = list(f64)
        no_b[2 if op == "backsub_linear_relu" else 3] = None
        torch.library.opcheck(getattr(torch.ops.gls, op).default, tuple(no_b))


# ---- errors ---------------------------------------------------------------------------------------

def _backsub_bad_inputs():
    good = _backsub_args(2, 3, 4, 5, 6, w_members=2, b_members=2, r_members=2)
    lam, W, b, al, cl, au, cu = good
    return [
        ((lam.double(), W, b, al, cl, au, cu), "same dtype"),
        ((lam[0], W, b, al, cl, au, cu), "lam must be 4-D"),
        ((lam, W[0], b, al, cl, au, cu), "W must be 3-D"),
        ((lam, torch.randn(3, 5, 6), b, al, cl, au, cu), "W has 3 population members, expected 2 or 1"),
        ((lam, torch.randn(2, 4, 6), b, al, cl, au, cu), "N_out"),
        ((lam, W, torch.randn(2, 4), al, cl, au, cu), "b must have N_out"),
        ((lam, W, b, al[:, :2], cl, au, cu), "a_l must have shape"),
        ((lam, W, b, al, cl[..., :5], au, cu), "c_u|c_l must have the shape of a_l"),
        ((lam.int(), W.int(), None, al.int(), cl.int(), au.int(), cu.int()), "float32 or float64"),
    ]


@pytest.mark.skipif(not native.has_kernel("backsub_linear_relu", "CPU"), reason="gls._C not built")
def test_errors():
    for args, msg in _backsub_bad_inputs():
        with pytest.raises(RuntimeError, match=msg):
            ops.backsub_linear_relu(*args, backend="cpp")
    lam, W, _, *relax = _backsub_args(2, 3, 4, 5, 6, w_members=2, b_members=None, r_members=2)
    for grads, msg in [((torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4)), "grad_lam must have shape"),
                       ((torch.zeros(2, 3, 4, 6), torch.zeros(2, 3)), "grad_bias must have shape"),
                       ((torch.zeros(2, 3, 4, 6, dtype=torch.float64), torch.zeros(2, 3, 4)), "same dtype")]:
        with pytest.raises(RuntimeError, match=msg):
            torch.ops.gls.backsub_linear_relu_backward(lam, W, *grads, *relax)
    lam, bias, lo, hi = _concretize_args(2, 3, 4, 5)
    for args, msg in [((lam, bias[..., :2], lo, hi), "bias must have shape"),
                      ((lam, bias, lo[:2], hi), "x_lo must have shape"),
                      ((lam, bias, lo, hi[:, :3]), "x_hi must have the shape"),
                      ((lam, bias.double(), lo, hi), "same dtype"),
                      ((lam.half(), bias.half(), lo.half(), hi.half()), "float32 or float64")]:
        with pytest.raises(RuntimeError, match=msg):
            ops.concretize(*args, backend="cpp")
    mid, rad, W, b = _ibp_args((2, 2, 2, 2), 3, 5, 4, True)
    for args, msg in [((mid, rad, torch.randn(3, 4, 5), b), "W has 3 population members, expected 2 or 1"),
                      ((mid, rad[:, :2], W, b), "rad must have shape"),
                      ((mid, rad, W[..., :4], b), "W must have N_in"),
                      ((mid, rad, W, b[:, :3]), "b must have N_out"),
                      ((mid[0], rad, W, b), "mid must be 3-D"),
                      ((mid, rad, W.double(), b), "same dtype")]:
        with pytest.raises(RuntimeError, match=msg):
            ops.ibp_affine(*args, backend="cpp")


@pytest.mark.cuda
@pytest.mark.skipif(not native.has_kernel("backsub_linear_relu", "CUDA"), reason="no CUDA kernels built")
def test_errors_cpu_cuda_mix():
    lam, W, b, *relax = _backsub_args(2, 3, 4, 5, 6, w_members=2, b_members=2, r_members=2)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        torch.ops.gls.backsub_linear_relu(lam.cuda(), W, b, *relax)
    x = _concretize_args(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        torch.ops.gls.concretize(x[0].cuda(), *x[1:])
    mid, rad, Wi, bi = _ibp_args((2, 2, 2, 2), 3, 5, 4, True)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        torch.ops.gls.ibp_affine(mid, rad.cuda(), Wi, bi)
