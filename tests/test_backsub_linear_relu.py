"""backsub_linear_relu: every backend (the `backend` fixture) against the reference, and its helper op
gls::backsub_linear_relu_backward (the fused backward epilogue, csrc only) against its torch definition.

Odd sizes (not multiples of any tile), P = 1 and populations, shared (P=1) weights, biases, relaxations
and inputs, b = None, empty dimensions; gradients against the reference, gradcheck through the op,
opcheck, and clear errors on bad input.
"""
import pytest
import torch

from bound_op_cases import assert_all_close, grads, leaf_args, relaxation
from conftest import helper_op_params
from gls import native
from gls.meta import backsub_linear_relu as meta
from gls.reference import bound_ops as ref

OP = "backsub_linear_relu"
TRITON_FLOAT32_ONLY = True


def _args(P, B, S, n_out, n_in, *, w_members, b_members, r_members, dtype=torch.float32, device="cpu"):
    lam = torch.randn(P, B, S, n_out, dtype=dtype, device=device)
    W = torch.randn(w_members, n_out, n_in, dtype=dtype, device=device) / max(n_out, 1) ** 0.5
    b = None if b_members is None else torch.randn(b_members, n_out, dtype=dtype, device=device)
    return (lam, W, b, *relaxation(r_members, B, n_in, dtype, device))


def _general_args(P, Pw, B, S, n_out, n_in, bias=True, device="cpu"):
    """General lines (not a ReLU relaxation), so both the c_l and the c_u paths count."""
    lines = [torch.randn(P, B, n_in, device=device) for _ in range(4)]
    return [torch.randn(P, B, S, n_out, device=device), torch.randn(Pw, n_out, n_in, device=device),
            torch.randn(Pw, n_out, device=device) if bias else None, *lines]


# ---- forward against the reference ---------------------------------------------------------------

SHAPES = [  # P, B, S, N_out, N_in
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sharing", ["per-member", "shared-W", "shared-all", "no-b"])
def test_matches_reference(backend, dtype, shape, sharing):
    backend.require(dtype)
    P = shape[0]
    w_m, b_m, r_m = {"per-member": (P, P, P), "shared-W": (1, P, P), "shared-all": (1, 1, 1), "no-b": (P, None, P)}[sharing]
    args = _args(*shape, w_members=w_m, b_members=b_m, r_members=r_m, dtype=dtype, device=backend.device)
    assert_all_close(backend(*args), ref.backsub_linear_relu(*args), dtype)


GENERAL_CASES = [
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


@pytest.mark.parametrize("case", GENERAL_CASES, ids=lambda c: "P{}_Pw{}_B{}_S{}_out{}_in{}_b{}".format(*c))
def test_general_lines_match_reference(backend, case):
    args = _general_args(*case, device=backend.device)
    for got, want in zip(backend(*args), ref.backsub_linear_relu(*args)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_member_matches_single(backend):
    """A member inside a population gets the numbers it gets alone (P = 1)."""
    lam, W, b, *relax = _args(6, 3, 5, 33, 65, w_members=6, b_members=6, r_members=6, device=backend.device)
    full = backend(lam, W, b, *relax)
    for p in (0, 4):
        one = backend(lam[p : p + 1], W[p : p + 1], b[p : p + 1], *(t[p : p + 1] for t in relax))
        for f, o in zip(full, one):
            torch.testing.assert_close(f[p : p + 1], o, rtol=1e-6, atol=1e-6)


def test_non_contiguous_inputs(backend):
    lam, W, b, *relax = _args(3, 2, 4, 7, 9, w_members=3, b_members=3, r_members=3, device=backend.device)
    lam_t = lam.transpose(1, 2).contiguous().transpose(1, 2)
    W_t = W.transpose(1, 2).contiguous().transpose(1, 2)
    assert not lam_t.is_contiguous() and not W_t.is_contiguous()
    assert_all_close(backend(lam_t, W_t, b, *relax), ref.backsub_linear_relu(lam, W, b, *relax), torch.float32)
    lam, W, b, *lines = _general_args(3, 3, 2, 4, 20, 37, device=backend.device)
    lam = lam.transpose(-1, -2).contiguous().transpose(-1, -2)
    W = W.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not lam.is_contiguous() and not W.is_contiguous()
    for g, w in zip(backend(lam, W, b, *lines), ref.backsub_linear_relu(lam, W, b, *lines)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-4)


# ---- gradients ------------------------------------------------------------------------------------

def _gradient_case(device):
    return _args(3, 2, 4, 7, 9, w_members=1, b_members=3, r_members=3, dtype=torch.float64, device=device)


@pytest.mark.parametrize("members", [(3, 3, 3), (1, 1, 1), (3, None, 1)])  # W, b, relaxation
def test_closed_form_gradients_match_reference(backend, members):
    """The closed-form backward against autograd through the reference, shared inputs and g == 0 included."""
    backend.require(torch.float64)
    w_m, b_m, r_m = members
    args = _args(3, 2, 4, 7, 9, w_members=w_m, b_members=b_m, r_members=r_m, dtype=torch.float64, device=backend.device)
    args[0][1, 1, 2] = 0  # a zero row of lam: g == 0 exactly, where the reference's clamps pass no gradient
    for g, r in zip(grads(backend, leaf_args(args)), grads(ref.backsub_linear_relu, leaf_args(args))):
        torch.testing.assert_close(g, r)
    only_bias = lambda *a: backend(*a)[1]  # noqa: E731  (an unused output: its gradient arrives as None)
    for g, r in zip(grads(only_bias, leaf_args(args)), grads(lambda *a: ref.backsub_linear_relu(*a)[1], leaf_args(args))):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("Pw,bias", [(1, True), (3, True), (3, False)])
def test_float32_gradients_match_reference(backend, Pw, bias):
    args = [t if t is None else t.requires_grad_(True) for t in _general_args(3, Pw, 2, 3, 19, 35, bias, device=backend.device)]
    leaves = [t for t in args if t is not None]
    w_lam, w_bias = torch.randn(3, 2, 3, 35, device=backend.device), torch.randn(3, 2, 3, device=backend.device)

    def grads_of(fn):
        lam_next, b_out = fn(*args)
        return torch.autograd.grad((lam_next * w_lam).sum() + (b_out * w_bias).sum(), leaves)

    for g, r in zip(grads_of(backend), grads_of(ref.backsub_linear_relu)):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-4)


def test_gradients_match_reference(backend):
    backend.require(torch.float64)
    args = _gradient_case(backend.device)
    for g, r in zip(grads(backend, leaf_args(args)), grads(ref.backsub_linear_relu, leaf_args(args))):
        torch.testing.assert_close(g, r)


def test_gradcheck_through_op(backend):
    backend.require(torch.float64)
    small = _args(2, 2, 2, 3, 4, w_members=2, b_members=1, r_members=2, dtype=torch.float64, device=backend.device)
    assert torch.autograd.gradcheck(backend, tuple(leaf_args(small)))


def test_double_backward(backend):
    backend.require(torch.float64)
    args = _args(2, 2, 2, 3, 4, w_members=2, b_members=2, r_members=2, dtype=torch.float64, device=backend.device)
    assert torch.autograd.gradgradcheck(backend, tuple(leaf_args(args)))


def test_reference_gradcheck():
    assert torch.autograd.gradcheck(ref.backsub_linear_relu, tuple(leaf_args(_gradient_case("cpu"))))


# The helper op on every backend with a kernel for it: cpp, cuda and the emulated cuda.
backward_kernels = pytest.mark.parametrize("helper", helper_op_params("backsub_linear_relu_backward"), ids=lambda h: h.backend)


@backward_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1), (3, 2, 5, 33, 17), (2, 3, 1, 129, 65), (2, 3, 0, 4, 5), (2, 3, 2, 0, 5), (0, 2, 2, 3, 4)])
@pytest.mark.parametrize("members", [(None, None), (1, 1)])  # W, relaxation: per member / shared
def test_backward_kernel_matches_torch(helper, dtype, shape, members):
    """The fused backward epilogue against the same formulas in torch ops (its double-backward path)."""
    device = helper.device
    P = shape[0]
    w_m, r_m = (m if m is not None else P for m in members)
    lam, W, _, *relax = _args(*shape, w_members=w_m, b_members=None, r_members=r_m, dtype=dtype, device=device)
    lam[..., :1, :] = 0  # g == 0 rows
    g_lam = torch.randn(*shape[:3], shape[4], dtype=dtype, device=device)
    g_bias = torch.randn(shape[:3], dtype=dtype, device=device)
    got = helper.op(lam, W, g_lam, g_bias, *relax)
    want = meta.epilogue_torch(lam, W, g_lam, g_bias, *relax)
    assert_all_close(tuple(got), tuple(want), dtype)


# ---- opcheck --------------------------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(backend, bias):
    op = backend.torch_op().default
    d = backend.device
    torch.library.opcheck(op, tuple(_general_args(2, 1, 2, 3, 5, 7, bias, device=d)))
    torch.library.opcheck(op, tuple(t if t is None else t.requires_grad_(True) for t in _general_args(2, 2, 1, 2, 4, 6, bias, device=d)))
    if backend.float32_only:
        return
    torch.library.opcheck(op, tuple(_args(2, 3, 2, 5, 7, w_members=1, b_members=2 if bias else None, r_members=2, device=d)))
    f64 = leaf_args(_gradient_case(d))
    if not bias:
        f64[2] = None
    torch.library.opcheck(op, tuple(f64))


@backward_kernels
def test_opcheck_backward_kernel(helper):
    device = helper.device
    lam, W, _, *relax = leaf_args(_gradient_case(device))
    g = (torch.randn(*lam.shape[:3], W.shape[-1], dtype=lam.dtype, device=device), torch.randn(lam.shape[:3], dtype=lam.dtype, device=device))
    torch.library.opcheck(helper.op.default, (lam.detach(), W.detach(), *g, *(r.detach() for r in relax)))


# ---- errors ---------------------------------------------------------------------------------------

def _compiled_bad_inputs():
    lam, W, b, al, cl, au, cu = _args(2, 3, 4, 5, 6, w_members=2, b_members=2, r_members=2)
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


def _triton_bad_inputs():
    lam, W, b, a_l, c_l, a_u, c_u = _general_args(2, 2, 3, 4, 5, 6)
    return [
        ((lam[0], W, b, a_l, c_l, a_u, c_u), ValueError, "lam must have 4 dimensions"),
        ((lam, torch.randn(2, 4, 6), b, a_l, c_l, a_u, c_u), ValueError, "W must have shape"),
        ((lam, torch.randn(3, 5, 6), b, a_l, c_l, a_u, c_u), ValueError, "W must have shape"),
        ((lam, W, torch.randn(2, 4), a_l, c_l, a_u, c_u), ValueError, "b must have shape"),
        ((lam, W, b, a_l, c_l, a_u, torch.randn(2, 3, 5)), ValueError, "c_u must have shape"),
        ((lam, W.double(), b, a_l, c_l, a_u, c_u), TypeError, "W has dtype torch.float64"),
    ]


def test_errors(backend):
    if backend.name in ("cpp", "cuda-emu"):  # the same host checks (csrc/include/gls/*_checks.h)
        for args, msg in _compiled_bad_inputs():
            with pytest.raises(RuntimeError, match=msg):
                backend(*args)
    elif backend.name == "triton":
        for args, exc, msg in _triton_bad_inputs():
            with pytest.raises(exc, match=msg):
                backend(*[a if a is None else a.to(backend.device) for a in args])
    else:
        pytest.skip(f"no error table for {backend.name}")


@pytest.mark.parametrize("helper", [p for p in helper_op_params("backsub_linear_relu_backward") if p.id != "cuda"],
                         ids=lambda h: h.backend)
def test_backward_kernel_errors(helper):  # CPU tensors: cpp and the emulated cuda, which share the host checks
    lam, W, _, *relax = _args(2, 3, 4, 5, 6, w_members=2, b_members=None, r_members=2)
    for g, msg in [((torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4)), "grad_lam must have shape"),
                   ((torch.zeros(2, 3, 4, 6), torch.zeros(2, 3)), "grad_bias must have shape"),
                   ((torch.zeros(2, 3, 4, 6, dtype=torch.float64), torch.zeros(2, 3, 4)), "same dtype")]:
        with pytest.raises(RuntimeError, match=msg):
            helper.op(lam, W, *g, *relax)


def test_triton_dot_precision_is_validated(monkeypatch):
    pytest.importorskip("triton")
    from gls_kernels import common
    from gls_kernels.backsub_linear_relu import backsub_linear_relu

    monkeypatch.setattr(common, "DOT_PRECISION", "fp8")
    with pytest.raises(ValueError, match="DOT_PRECISION='fp8'"):
        backsub_linear_relu(*_general_args(1, 1, 1, 1, 2, 2))


@pytest.mark.cuda
@pytest.mark.skipif(not native.has_kernel(OP, "CUDA"), reason="no CUDA kernels built")
def test_errors_cpu_cuda_mix():
    lam, W, b, *relax = _args(2, 3, 4, 5, 6, w_members=2, b_members=2, r_members=2)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        torch.ops.gls.backsub_linear_relu(lam.cuda(), W, b, *relax)
