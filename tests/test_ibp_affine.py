"""ibp_affine: every backend (the `backend` fixture) against the reference: odd sizes, every sharing of the
population axis (mid/rad, W, b), b = None, empty dimensions, views, gradients, opcheck and clear errors."""
import pytest
import torch

from bound_op_cases import assert_all_close, grads, leaf_args
from gls import native
from gls.meta.ibp_affine import joint
from gls.reference import bound_ops as ref

OP = "ibp_affine"
TRITON_FLOAT32_ONLY = True


def _args(members, B, n_in, n_out, with_b, dtype=torch.float32, device="cpu"):
    pm, pr, pw, pb = members
    mid = torch.randn(pm, B, n_in, dtype=dtype, device=device)
    rad = torch.rand(pr, B, n_in, dtype=dtype, device=device)
    W = torch.randn(pw, n_out, n_in, dtype=dtype, device=device)
    b = torch.randn(pb, n_out, dtype=dtype, device=device) if with_b else None
    return mid, rad, W, b


SHAPES = [(1, 1, 1), (2, 33, 129), (3, 129, 3), (64, 100, 10), (0, 3, 4), (3, 0, 4), (3, 4, 0)]  # B, N_in, N_out
MEMBERS = [(1, 1, 1, 1), (4, 4, 4, 4), (4, 4, 1, 1), (1, 1, 3, 3), (4, 1, 4, 1), (1, 3, 1, 1), (1, 1, 1, 2), (0, 0, 1, 1)]
# What the Triton kernel refuses (gls_kernels/ibp_affine.py): mid and rad with different population sizes,
# and a per-member b with everything else shared.
TRITON_REFUSES = {(4, 1, 4, 1): "mid and rad must have the same shape", (1, 3, 1, 1): "mid and rad must have the same shape",
                  (1, 1, 1, 2): "b must have shape"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("members", MEMBERS)
@pytest.mark.parametrize("with_b", [True, False])
def test_matches_reference(backend, dtype, shape, members, with_b):
    backend.require(dtype)
    args = _args(members, *shape, with_b, dtype=dtype, device=backend.device)
    refused = TRITON_REFUSES.get(members) if backend.name == "triton" else None
    if refused and (with_b or "b must" not in refused):
        with pytest.raises(ValueError, match=refused):
            backend(*args)
        return
    assert_all_close(backend(*args), joint(*args), dtype)


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


def _case_args(Px, Pw, Pb, B, n_in, n_out, device="cpu"):
    """Pb None: no bias."""
    return [torch.randn(Px, B, n_in, device=device), torch.rand(Px, B, n_in, device=device), torch.randn(Pw, n_out, n_in, device=device),
            None if Pb is None else torch.randn(Pb, n_out, device=device)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "Px{}_Pw{}_Pb{}_B{}_in{}_out{}".format(*c))
def test_cases_match_reference(backend, case):
    args = _case_args(*case, device=backend.device)
    for got, want in zip(backend(*args), ref.ibp_affine(*args)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("B", [4, 9])
def test_members_as_views_of_one_population(backend, B):
    """W's members as views into one (P, d) tensor (a population's layout, read in place by the CPU
    kernel), with more inputs than one block of the CPU kernel holds (8192 floats), at a batch that takes
    the dot-product path (<= 8 rows) and one that takes the blocked GEMMs."""
    P, n_in, n_out = 3, 8200, 5
    flat = torch.randn(P, n_out * n_in + 7, device=backend.device)
    W = flat[:, 7:].view(P, n_out, n_in)
    assert not W.is_contiguous()
    mid, rad = torch.randn(P, B, n_in, device=backend.device), torch.rand(P, B, n_in, device=backend.device)
    b = torch.randn(P, n_out, device=backend.device)
    for got, want in zip(backend(mid, rad, W, b), ref.ibp_affine(mid.double(), rad.double(), W.double(), b.double())):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-3)


def test_non_contiguous_inputs(backend):
    mid, rad, W, b = _args((2, 2, 2, 2), 3, 5, 4, True, device=backend.device)
    W_t = W.transpose(1, 2).contiguous().transpose(1, 2)
    assert_all_close(backend(mid, rad, W_t, b), joint(mid, rad, W, b), torch.float32)
    mid, rad, W, b = _case_args(3, 3, 3, 4, 37, 20, device=backend.device)
    W = W.transpose(-1, -2).contiguous().transpose(-1, -2)
    mid = mid.transpose(0, 1).contiguous().transpose(0, 1)
    for g, w in zip(backend(mid, rad, W, b), ref.ibp_affine(mid, rad, W, b)):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _gradient_case(device):
    return _args((3, 3, 1, 1), 2, 7, 5, True, dtype=torch.float64, device=device)


def test_gradients_match_reference(backend):
    backend.require(torch.float64)
    args = _gradient_case(backend.device)
    for g, r in zip(grads(backend, leaf_args(args)), grads(joint, leaf_args(args))):
        torch.testing.assert_close(g, r)


@pytest.mark.parametrize("Px,Pw,Pb", [(1, 3, 3), (3, 1, 1), (3, 3, None)])
def test_float32_gradients_match_reference(backend, Px, Pw, Pb):
    args = [t if t is None else t.requires_grad_(True) for t in _case_args(Px, Pw, Pb, 5, 35, 19, device=backend.device)]
    leaves = [t for t in args if t is not None]
    w_mid, w_rad = torch.randn(3, 5, 19, device=backend.device), torch.randn(3, 5, 19, device=backend.device)

    def grads_of(fn):
        mid, rad = fn(*args)
        return torch.autograd.grad((mid * w_mid).sum() + (rad * w_rad).sum(), leaves)

    for g, r in zip(grads_of(backend), grads_of(ref.ibp_affine)):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5)


def test_gradcheck_through_op(backend):
    backend.require(torch.float64)
    small = _args((2, 1, 1, 2), 2, 3, 4, True, dtype=torch.float64, device=backend.device)
    assert torch.autograd.gradcheck(backend, tuple(leaf_args(small)))


def test_reference_gradcheck():
    assert torch.autograd.gradcheck(ref.ibp_affine, tuple(leaf_args(_gradient_case("cpu"))))


def test_opcheck(backend):
    op = backend.torch_op().default
    d = backend.device
    torch.library.opcheck(op, tuple(_case_args(1, 2, 2, 3, 5, 4, device=d)))
    torch.library.opcheck(op, tuple(_case_args(2, 2, None, 3, 5, 4, device=d)))
    torch.library.opcheck(op, tuple(t.requires_grad_(True) for t in _case_args(2, 1, 1, 3, 5, 4, device=d)))
    if backend.float32_only:
        return
    torch.library.opcheck(op, tuple(_args((2, 2, 1, 1), 3, 5, 4, True, device=d)))
    f64 = leaf_args(_gradient_case(d))
    torch.library.opcheck(op, tuple(f64))
    torch.library.opcheck(op, tuple(f64[:3] + [None]))


def test_errors(backend):
    mid, rad, W, b = _args((2, 2, 2, 2), 3, 5, 4, True, device=backend.device)
    if backend.name in ("cpp", "cuda-emu"):  # the same host checks (csrc/include/gls/*_checks.h)
        cases = [((mid, rad, torch.randn(3, 4, 5), b), RuntimeError, "W has 3 population members, expected 2 or 1"),
                 ((mid, rad[:, :2], W, b), RuntimeError, "rad must have shape"),
                 ((mid, rad, W[..., :4], b), RuntimeError, "W must have N_in"),
                 ((mid, rad, W, b[:, :3]), RuntimeError, "b must have N_out"),
                 ((mid[0], rad, W, b), RuntimeError, "mid must be 3-D"),
                 ((mid, rad, W.double(), b), RuntimeError, "same dtype")]
    elif backend.name == "triton":
        cases = [((mid, rad[:1], W, b), ValueError, "mid and rad must have the same shape"),
                 ((mid, rad, torch.randn(2, 4, 6), b), ValueError, "W has N_in=6 columns"),
                 ((mid, rad, torch.randn(3, 4, 5), b), ValueError, "population sizes"),
                 ((mid[:1], rad[:1], W[:1], b), ValueError, "b must have shape"),  # per-member b with everything else shared
                 ((mid, rad, W[0], b), ValueError, "W must have 3 dimensions"),
                 ((mid.double(), rad.double(), W.double(), b.double()), TypeError, "mid has dtype torch.float64")]
    else:
        pytest.skip(f"no error table for {backend.name}")
    for args, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            backend(*args)


@pytest.mark.cuda
@pytest.mark.skipif(not native.has_kernel(OP, "CUDA"), reason="no CUDA kernels built")
def test_errors_cpu_cuda_mix():
    mid, rad, W, b = _args((2, 2, 2, 2), 3, 5, 4, True)
    with pytest.raises(RuntimeError, match="same CUDA device"):
        torch.ops.gls.ibp_affine(mid, rad.cuda(), W, b)
