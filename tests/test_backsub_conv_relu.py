"""backsub_conv_relu: the reference against dense transposed convolutions, every backend (the `backend`
fixture) against the reference, forward and gradients, and the helper op gls::backsub_conv_relu_backward
(the closed-form backward, csrc only) against the reference's autograd.

Cases (tests/conv_windows.py): stride 1 and 2, dilation 2, non-square kernels, windows partly outside
the map, C_in = 1, P = 1 and populations with shared (P = 1) filters, biases or lines, b None, one-hot
rows (transposed-convolution entries exactly 0, where the g >= 0 selection matters), no rows, and
all-zero rows among the others (the padding rows of ragged per-sample row sets, which the CPU kernels
leave out of their GEMMs).
"""
import pytest
import torch
import torch.nn.functional as F

from bound_op_cases import per_thread_count
from conftest import helper_op_params
from conv_windows import CASES, case_id, conv_args
from gls import native, ops, windows
from gls.reference import bound_ops as ref

OP = "backsub_conv_relu"
TRITON_FLOAT32_ONLY = True

# More than one block of threads per window (C_in*h'*w' = 8*11*11) and many rows per sample.
LARGE = (2, 1, 2, 3, 40, 6, 8, 4, 4, (3, 3), 13, 12, (2, 2), (2, 2), True, False)
needs_backward_op = pytest.mark.skipif(not native.has_op("backsub_conv_relu_backward"), reason="gls._C not built")
# The helper op on every backend with a kernel for it: cpp, cuda and the emulated cuda.
backward_ops = pytest.mark.parametrize("helper", helper_op_params("backsub_conv_relu_backward"), ids=lambda h: h.backend)


def _interpreted_large(backend, case):
    if case is LARGE and backend.name == "triton" and backend.device == "cpu":
        pytest.skip("too large for the Triton interpreter (a minute per call); the other cases cover its code paths")


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)


def _leaves(args):
    args = list(args)
    for i in range(7):
        if args[i] is not None:
            args[i] = args[i].detach().requires_grad_(True)
    return args


def _zero_rows(args, every=2):
    """args with every `every`-th row of each (member, sample) zero, like the padding rows of gls.bounds."""
    lam = args[0].clone()
    lam[:, :, ::every] = 0
    return (lam, *args[1:])


def _grads(fn, args, weights):
    leaves = [t for t in args[:7] if t is not None]
    lam_next, bias = fn(*args)[:2]
    return torch.autograd.grad((lam_next * weights[0]).sum() + (bias * weights[1]).sum(), leaves)


# ---- the reference ---------------------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_reference_is_the_windowed_transposed_convolution(case):
    lam, Wt, b, a_l, c_l, a_u, c_u, origin, stride, dilation = conv_args(case, torch.float64)
    got, bias, window = ref.backsub_conv_relu(lam, Wt, b, a_l, c_l, a_u, c_u, origin, stride, dilation, True)
    P, B, R, c_out = lam.shape[:4]
    g = torch.stack([F.conv_transpose2d(lam[p].reshape(B * R, c_out, *lam.shape[-2:]), Wt[min(p, Wt.shape[0] - 1)],
                                        stride=stride, dilation=dilation) for p in range(P)])
    g = g.reshape(P, B, R, *g.shape[-3:])
    size, H, W = g.shape[-2:], *a_l.shape[-2:]
    pos = g >= 0
    al, au, cl, cu = (windows.gather(t, origin, size) for t in (a_l, a_u, c_l, c_u))
    inside = windows.inside(origin, size, H, W, g.dtype)
    torch.testing.assert_close(got, g * torch.where(pos, al, au) * inside)
    torch.testing.assert_close(window, g * inside)
    want = (g * torch.where(pos, cl, cu)).sum((-3, -2, -1))
    if b is not None:
        want = want + (lam.sum((-2, -1)) * b[:, None, None, :]).sum(-1)
    torch.testing.assert_close(bias, want)


def test_windows_gather_and_scatter_are_inverse_inside_the_map():
    maps = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    origin = torch.tensor([[[[-2, 1], [3, 4]]] * 3] * 2)
    win = windows.gather(maps, origin, (4, 3))
    assert win.shape == (2, 3, 2, 4, 4, 3)
    torch.testing.assert_close(win[0, 1, 0, :, 2:, :], maps[0, 1, :, 0:2, 1:4])  # window rows 2.. are map rows 0..
    assert (win[0, 1, 0, :, :2] == 0).all()  # above the map
    dense = windows.scatter(win, origin, 5, 6)
    inside = windows.scatter(windows.inside(origin, (4, 3), 5, 6, maps.dtype).expand_as(win), origin, 5, 6)
    torch.testing.assert_close(dense, maps.unsqueeze(2) * inside)


@pytest.mark.parametrize("case", [CASES[1], CASES[4]], ids=case_id)
def test_gradcheck_reference(case):
    args = _leaves(conv_args(case, torch.float64))
    idx = [i for i in range(7) if args[i] is not None]

    def f(*tensors):
        full = list(args)
        for i, t in zip(idx, tensors):
            full[i] = t
        return ref.backsub_conv_relu(*full)

    assert torch.autograd.gradcheck(f, [args[i] for i in idx])


# ---- every backend against the reference -------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES + [LARGE], ids=case_id)
def test_matches_reference(backend, case, dtype):
    backend.require(dtype)
    _interpreted_large(backend, case)
    args = conv_args(case, dtype, backend.device)
    for got, want in zip(backend(*args), ref.backsub_conv_relu(*args)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, **_tol(dtype))


@pytest.mark.parametrize("case", [CASES[2], CASES[5], LARGE], ids=case_id)
def test_zero_rows_match_reference(backend, case):
    _interpreted_large(backend, case)
    args = _zero_rows(conv_args(case, torch.float64 if backend.name != "triton" else torch.float32, backend.device))
    for got, want in zip(backend(*args), ref.backsub_conv_relu(*args)):
        torch.testing.assert_close(got, want, **_tol(got.dtype))
    assert (backend(*args)[0][:, :, ::2] == 0).all()


def test_non_contiguous_inputs(backend):
    lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation = conv_args(CASES[3], torch.float32, backend.device)
    lam = lam.transpose(-1, -2).contiguous().transpose(-1, -2)
    a_l = a_l.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not lam.is_contiguous() and not a_l.is_contiguous()
    args = (lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation)
    for got, want in zip(backend(*args), ref.backsub_conv_relu(*args)):
        torch.testing.assert_close(got, want, **_tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[4], CASES[5], LARGE], ids=case_id)
def test_gradients_match_reference(backend, case, dtype):
    backend.require(dtype)
    _interpreted_large(backend, case)
    args = _leaves(conv_args(case, dtype, backend.device))
    out = ref.backsub_conv_relu(*args)
    weights = (torch.randn_like(out[0]), torch.randn_like(out[1]))
    for got, want in zip(_grads(backend, args, weights), _grads(ref.backsub_conv_relu, args, weights)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, **_tol(dtype))


def test_unused_first_output(backend):
    """A concretisation uses only the constant: the backward gets no gradient for lam'."""
    args = _leaves(conv_args(CASES[3], torch.float32, backend.device))
    got = torch.autograd.grad(backend(*args)[1].sum(), args[1])
    want = torch.autograd.grad(ref.backsub_conv_relu(*args)[1].sum(), args[1])
    torch.testing.assert_close(got[0], want[0], **_tol(torch.float32))


@pytest.mark.parametrize("bias", [True, False])
def test_opcheck(backend, bias):
    case = (2, 1, 2, 1, 2, 3, 2, 2, 2, (2, 2), 4, 5, (2, 1), (1, 2), bias, False)
    op = backend.torch_op().default
    torch.library.opcheck(op, conv_args(case, torch.float32, backend.device))
    torch.library.opcheck(op, tuple(_leaves(conv_args(case, torch.float32, backend.device))))
    torch.library.opcheck(op, (*_leaves(conv_args(case, torch.float32, backend.device)), True))


@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[5]], ids=case_id)
def test_kept_window_matches_reference(backend, case):
    """keep_window: the op's third output is each row's transposed convolution, zero outside the map."""
    args = conv_args(case, torch.float32, backend.device)
    got = backend.torch_op()(*args, True)[2]
    want = ref.backsub_conv_relu(*args, True)[2]
    torch.testing.assert_close(got, want, **_tol(torch.float32))
    assert backend.torch_op()(*args)[2].numel() == 0


def test_gradients_without_kept_window(backend):
    """Called without keep_window under autograd, the op's backward falls back to the reference's."""
    args = _leaves(conv_args(CASES[3], torch.float32, backend.device))
    out = ref.backsub_conv_relu(*args)
    weights = (torch.randn_like(out[0]), torch.randn_like(out[1]))
    for got, want in zip(_grads(backend.torch_op(), args, weights), _grads(ref.backsub_conv_relu, args, weights)):
        torch.testing.assert_close(got, want, **_tol(torch.float32))


def test_errors(backend):
    case = (2, 2, 2, 3, 2, 4, 3, 2, 2, (3, 3), 6, 6, (1, 1), (1, 1), True, False)
    lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation = conv_args(case, torch.float32, backend.device)
    err = (RuntimeError, ValueError)
    with pytest.raises(err, match="lam must"):
        backend(lam[0], W, b, a_l, c_l, a_u, c_u, origin, stride, dilation)
    with pytest.raises(err, match="W must have"):
        backend(lam, W[:, :3], b, a_l, c_l, a_u, c_u, origin, stride, dilation)
    with pytest.raises(err, match="b must have"):
        backend(lam, W, b[:, :3], a_l, c_l, a_u, c_u, origin, stride, dilation)
    with pytest.raises(err, match="c_u must have the shape of a_l"):
        backend(lam, W, b, a_l, c_l, a_u, c_u[..., :4], origin, stride, dilation)
    with pytest.raises(err, match="origin must be int64"):
        backend(lam, W, b, a_l, c_l, a_u, c_u, origin.int(), stride, dilation)
    with pytest.raises(err, match="must be 2 positive integers|must be positive"):
        backend(lam, W, b, a_l, c_l, a_u, c_u, origin, [0, 1], dilation)


# ---- the helper op gls::backsub_conv_relu_backward ------------------------------------------------

@backward_ops
@pytest.mark.parametrize("case", [CASES[2], CASES[3], CASES[5], LARGE], ids=case_id)
def test_backward_op_matches_reference_autograd(case, helper):
    """Every output of the backward op (per member, before the sum over shared inputs)."""
    args = _leaves(conv_args(case, torch.float64, helper.device))
    out = ref.backsub_conv_relu(*args)
    _backward_op_vs_reference(helper.op, args, torch.randn_like(out[0]), torch.randn_like(out[1]))


def _backward_op_vs_reference(op, args, g_lam, g_bias):
    """The backward op's outputs (given the reference's kept window) against the reference's autograd;
    returns them."""
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    window = ref.backsub_conv_relu(*plain, True)[2]
    got = op(*plain, window, g_lam, g_bias, True, True)
    P = args[0].shape[0]
    full = [a.expand(P, *a.shape[1:]) if i in (1, 2, 3, 4, 5, 6) and a is not None else a for i, a in enumerate(args)]
    leaves = [t for t in full[:7] if t is not None]
    want = list(torch.autograd.grad(ref.backsub_conv_relu(*full)[:2], leaves, (g_lam, g_bias)))
    if full[2] is None:
        want.insert(2, g_lam.new_zeros(0))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **_tol(torch.float64))
    return got


@backward_ops
@pytest.mark.parametrize("case", [CASES[2], CASES[5], LARGE], ids=case_id)
def test_backward_op_zero_rows(case, helper):
    """Zero rows with zero upstream gradients contribute nothing; zero rows with gradients still do
    (d_lam = conv(dg, W) + h b, line gradients through g = 0)."""
    args = _leaves(_zero_rows(conv_args(case, torch.float64)))
    out = ref.backsub_conv_relu(*args)
    g_lam, g_bias = torch.randn_like(out[0]), torch.randn_like(out[1])
    g_lam[:, :, 0::6], g_bias[:, :, 0::6] = 0, 0  # zero rows 0, 6, ...: padding
    g_bias[:, :, 2::6] = 0  # zero rows 2, 8, ...: gradient of the window only
    g_lam[:, :, 4::6] = 0  # zero rows 4, 10, ...: gradient of the constant only
    got = _backward_op_vs_reference(helper.op, args, g_lam, g_bias)
    assert got[0][:, :, ::6].eq(0).all()


@backward_ops
@pytest.mark.parametrize("case", [CASES[2], CASES[5], LARGE], ids=case_id)
def test_backward_op_computes_only_what_is_asked(case, helper):
    """An empty grad_lam is a zero upstream gradient that is never read (a concretisation); without
    lam_grad / line_grads those outputs are empty and the others unchanged."""
    args = conv_args(case, torch.float64, helper.device)
    window = ref.backsub_conv_relu(*args, True)[2]
    g_bias = torch.randn(window.shape[:3], dtype=torch.float64, device=helper.device)
    op = helper.op
    full = op(*args, window, torch.zeros_like(window), g_bias, True, True)
    got = op(*args, window, window.new_empty(0), g_bias, False, False)
    assert got[0].numel() == 0 and all(t.numel() == 0 for t in got[3:])
    for g, w in zip(got[1:3], full[1:3]):
        torch.testing.assert_close(g, w, **_tol(torch.float64))
    got = op(*args, window, window.new_empty(0), g_bias, True, True)
    for g, w in zip(got, full):
        torch.testing.assert_close(g, w, **_tol(torch.float64))


def _every_span_width(dtype):
    """Rows whose window rows overlap the map by every width from 1 to the window's 20 columns (the CPU
    kernels compile the epilogues for widths 1-16 and loop over wider ones): origin columns -19..23 on a
    24-wide map, one origin per row."""
    case = (1, 1, 1, 2, 43, 3, 2, 1, 1, (2, 20), 4, 24, (1, 1), (1, 1), True, False)
    lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation = conv_args(case, dtype)
    origin[..., 1] = torch.arange(-19, 24)
    return lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_span_width_matches_reference(backend, dtype):
    backend.require(dtype)
    if backend.name == "triton" and backend.device == "cpu":
        pytest.skip("a CPU-kernel code path; 25 s in the Triton interpreter, whose kernel has no per-width code")
    args = _every_span_width(dtype)
    for got, want in zip(backend(*args), ref.backsub_conv_relu(*args)):
        torch.testing.assert_close(got, want, **_tol(dtype))


@backward_ops
def test_backward_op_every_span_width(helper):
    args = _leaves(_every_span_width(torch.float64))
    out = ref.backsub_conv_relu(*args)
    _backward_op_vs_reference(helper.op, args, torch.randn_like(out[0]), torch.randn_like(out[1]))


@needs_backward_op
def test_cpu_results_do_not_depend_on_the_thread_count():
    """Threads take tasks as they free up (csrc/cpu/blocking.h parallel_tasks); every sum still runs in a
    fixed order, so 1 and 2 threads give the same bits."""
    args = _zero_rows(conv_args(LARGE, torch.float32))
    out = ref.backsub_conv_relu(*args)
    g_lam, g_bias = torch.randn_like(out[0]), torch.randn_like(out[1])

    def forward_and_backward():
        fwd = torch.ops.gls.backsub_conv_relu(*args, True)
        return (*fwd, *torch.ops.gls.backsub_conv_relu_backward(*args, fwd[2], g_lam, g_bias, True, True))

    for a, b in zip(*per_thread_count(forward_and_backward)):
        assert torch.equal(a, b)


@backward_ops
def test_backward_op_opcheck(helper):
    args = conv_args(CASES[3], torch.float32, helper.device)
    out = ref.backsub_conv_relu(*args, True)
    for flags in ((True, True), (False, False)):
        torch.library.opcheck(helper.op.default, (*args, out[2], torch.randn_like(out[0]), torch.randn_like(out[1]), *flags))
    torch.library.opcheck(helper.op.default, (*args, out[2], out[0].new_empty(0), torch.randn_like(out[1]), True, False))


@pytest.mark.parametrize("helper", [p for p in helper_op_params("backsub_conv_relu_backward") if p.id != "cpp"],
                         ids=lambda h: h.backend)
def test_cuda_is_deterministic(helper):
    """The CUDA kernels sum in a fixed order (no atomics): the same bits on every run, also when the
    emulation spreads the blocks over threads in a different order each time. On a GPU, cuda is the default."""
    args = conv_args(LARGE, torch.float32, helper.device)
    if helper.backend == "cuda":
        assert ops.resolve(OP, args[0].device)[0] == "cuda"
    forward = getattr(torch.ops.gls_cuda_emu if helper.backend == "cuda-emu" else torch.ops.gls, OP)
    first = forward(*args, True)
    g_lam, g_bias = torch.randn_like(first[0]), torch.randn_like(first[1])
    back = helper.op(*args, first[2], g_lam, g_bias, True, True)
    for _ in range(3):
        for a, b in zip(forward(*args, True), first):
            assert torch.equal(a, b)
        for a, b in zip(helper.op(*args, first[2], g_lam, g_bias, True, True), back):
            assert torch.equal(a, b)
