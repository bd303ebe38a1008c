"""Counter-based Gaussian noise: known answers, backends against each other and the reference, fused ops
against the materialised (P, d) computation, gradients, opcheck, determinism and bad input."""
import importlib.util

import pytest
import torch

from gls import native, noise, ops
from gls.reference import noise as ref

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
SEED_BIG = 0xFEDCBA9876543210  # >= 2^63: exercises the signed reinterpretation in the op schemas

KNOWN_ANSWERS = [  # Random123 philox4x32-10 vectors (docs/design.md §4): counter, key, output
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0], [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


def _kernel_backends():
    out = []
    if native.has_kernel("noise_normal", "CPU"):
        out.append(("cpp", "cpu"))
    if HAS_TRITON:
        out.append(pytest.param("triton", "cuda", marks=pytest.mark.cuda) if HAS_CUDA else ("triton", "cpu"))
    if native.has_kernel("noise_normal", "CUDA"):
        out.append(pytest.param("cuda", "cuda", marks=pytest.mark.cuda))
    return out


KERNELS = _kernel_backends()
ALL = [("reference", "cpu")] + KERNELS


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("counter,key,want", KNOWN_ANSWERS)
def test_known_answers(backend, device, counter, key, want):
    got = noise.philox4x32_10(torch.tensor(counter, device=device), torch.tensor(key, device=device), backend=backend)
    assert got.tolist() == want


@pytest.mark.parametrize("backend,device", KERNELS)
def test_words_bit_identical_to_reference(backend, device):
    counter = torch.randint(0, 2**32, (3, 37, 4), dtype=torch.int64)
    key = torch.randint(0, 2**32, (3, 37, 2), dtype=torch.int64)
    counter[0, :2] = torch.tensor([[0xFFFFFFFF] * 4, [0] * 4])  # extremes
    got = noise.philox4x32_10(counter.to(device), key.to(device), backend=backend).cpu()
    assert torch.equal(got, ref.philox4x32_10(counter, key))


def test_key_broadcasts():
    counter = torch.randint(0, 2**32, (5, 4), dtype=torch.int64)
    key = torch.tensor([7, 9])
    assert torch.equal(noise.philox4x32_10(counter, key), ref.philox4x32_10(counter, key.expand(5, 2)))


@pytest.mark.parametrize("backend,device", KERNELS)
@pytest.mark.parametrize("P,d,antithetic", [(1, 1, False), (1, 3, False), (3, 5, False), (4, 130, True), (2, 7, True)])
@pytest.mark.parametrize("seed", [0, SEED_BIG])
def test_normals_match_reference(backend, device, P, d, antithetic, seed):
    kw = dict(seed=seed, purpose=3, member_offset=11, antithetic=antithetic)
    got = noise.population_normal(P, d, device=device, backend=backend, **kw).cpu()
    want = noise.population_normal(P, d, backend="reference", **kw)
    assert got.shape == (P, d) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=0, atol=noise.NORMAL_ATOL)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_normal_uniform_words_are_the_contract(backend, device):
    """The uniforms behind the normals are exactly those of the u32 words: invert Box-Muller's radius."""
    n = noise.normal(64, seed=5, member=2, device=device, backend=backend).cpu().view(-1, 2)
    blocks = torch.arange(16)
    counter = torch.stack([blocks, torch.zeros(16, dtype=torch.int64), torch.full((16,), 2), torch.zeros(16, dtype=torch.int64)], -1)
    words = ref.philox4x32_10(counter, torch.tensor([5, 0])).view(-1, 2)
    u_even = ref.uniform(words[:, 0])
    torch.testing.assert_close(n.square().sum(1), -2 * torch.log(u_even), rtol=1e-5, atol=1e-5)


def test_reference_stream_definition():
    """Element i of member m is lane i % 4 of block i // 4 (a block boundary: elements 8 and 9 are block 2)."""
    seed, m, q = 123456789012, 5, 2
    full = noise.normal(10, seed=seed, member=m, purpose=q, backend="reference")
    words = ref.philox4x32_10(torch.tensor([2, 0, m, q]), torch.tensor([seed & 0xFFFFFFFF, seed >> 32]))
    u = ref.uniform(words)
    r = torch.sqrt(-2 * torch.log(u[0]))
    t = u[1] * torch.tensor(6.2831855)
    assert torch.equal(full[8:10], torch.stack([r * torch.cos(t), r * torch.sin(t)]))
    assert ref.uniform(torch.tensor([0, 0xFFFFFFFF])).tolist() == [2.0**-25, 1.0]  # float32 rounding at the top


@pytest.mark.parametrize("backend,device", ALL)
def test_streams_are_prefix_and_subrange_consistent(backend, device):
    full = noise.population_normal(6, 37, seed=9, device=device, backend=backend).cpu()
    part = noise.population_normal(2, 21, seed=9, member_offset=3, device=device, backend=backend).cpu()
    assert torch.equal(part, full[3:5, :21])
    one = noise.normal(37, seed=9, member=4, device=device, backend=backend).cpu()
    assert torch.equal(one, full[4])
    anti = noise.population_normal(4, 37, seed=9, member_offset=2, antithetic=True, device=device, backend=backend).cpu()
    assert torch.equal(anti[:2], full[2:4]) and torch.equal(anti[2:], -full[2:4])


def test_purpose_and_seed_words_separate_streams():
    base = noise.normal(64, seed=1, member=0)
    for other in (noise.normal(64, seed=1, member=0, purpose=1), noise.normal(64, seed=1 + 2**32, member=0), noise.normal(64, seed=1, member=1)):
        assert (other - base).abs().max() > 0.5


@pytest.mark.parametrize("backend,device", ALL)
def test_deterministic_across_calls_and_threads(backend, device):
    threads = torch.get_num_threads()
    d = 130 if backend == "triton" else 1001  # > one parallel chunk of the CPU kernels
    try:
        torch.set_num_threads(1)
        a = noise.noise_weighted_sum(torch.linspace(-1, 1, 6, device=device), 0.3, 77, d, antithetic=True, backend=backend)
        b = noise.population_normal(5, d, seed=77, device=device, backend=backend)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(a, noise.noise_weighted_sum(torch.linspace(-1, 1, 6, device=device), 0.3, 77, d, antithetic=True, backend=backend))
        assert torch.equal(b, noise.population_normal(5, d, seed=77, device=device, backend=backend))
    finally:
        torch.set_num_threads(threads)


def _materialised(P, d, seed, antithetic, offset=0):
    return noise.population_normal(P, d, seed=seed, member_offset=offset, antithetic=antithetic, backend="reference").double()


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("P,d,antithetic", [(1, 1, False), (1, 6, False), (5, 9, False), (6, 130, True), (2, 3, True)])
@pytest.mark.parametrize("sigma_kind", ["scalar", "vector"])
def test_fused_ops_equal_materialised(backend, device, P, d, antithetic, sigma_kind):
    eps = _materialised(P, d, 31, antithetic, offset=4)
    sigma = torch.rand(d, dtype=torch.float64) + 0.1 if sigma_kind == "vector" else torch.tensor(0.37, dtype=torch.float64)
    theta = torch.randn(d, dtype=torch.float64)
    w = torch.randn(P, dtype=torch.float64)
    kw = dict(member_offset=4, antithetic=antithetic, backend=backend)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-5)):
        s, t, wd = sigma.to(device, dtype), theta.to(device, dtype), w.to(device, dtype)
        pert = noise.perturb(t, s, 31, P, **kw)
        assert pert.dtype == dtype and pert.shape == (P, d)
        torch.testing.assert_close(pert.cpu().double(), theta + sigma * eps, rtol=tol, atol=tol * 10)
        g_mu = noise.noise_weighted_sum(wd, s, 31, d, **kw)
        torch.testing.assert_close(g_mu.cpu().double(), (w[:, None] * sigma * eps).sum(0), rtol=tol, atol=tol * 10)
        g_sigma = noise.noise_sigma_weighted_sum(wd, s, 31, d, **kw)
        want = (w[:, None] * ((sigma * eps) ** 2 - sigma**2) / sigma).sum(0)
        torch.testing.assert_close(g_sigma.cpu().double(), want, rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("backend,device", ALL)
def test_elementwise_weights(backend, device):
    W = torch.randn(4, 33)
    got = noise.noise_weighted_sum(W.to(device), torch.tensor(1.0, device=device), 8, 33, antithetic=True, backend=backend).cpu()
    torch.testing.assert_close(got, (W * noise.population_normal(4, 33, seed=8, antithetic=True)).sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("sigma_kind", ["scalar", "vector"])
def test_perturb_gradients(backend, device, sigma_kind):
    P, d = 6, 19
    theta = torch.randn(d, dtype=torch.float64, device=device, requires_grad=True)
    sigma = (torch.rand(d if sigma_kind == "vector" else (), dtype=torch.float64, device=device) + 0.1).requires_grad_(True)
    g = torch.randn(P, d, dtype=torch.float64, device=device)
    out = noise.perturb(theta, sigma, 3, P, antithetic=True, backend=backend)
    gt, gs = torch.autograd.grad(out, (theta, sigma), g)
    eps = _materialised(P, d, 3, True).to(device)
    torch.testing.assert_close(gt, g.sum(0))
    torch.testing.assert_close(gs, (g * eps).sum(0) if sigma_kind == "vector" else (g * eps).sum(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend,device", KERNELS)
def test_weighted_sum_gradients_match_reference(backend, device):
    w = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    sigma = (torch.rand(7, dtype=torch.float64, device=device) + 0.1).requires_grad_(True)
    g = torch.randn(7, dtype=torch.float64, device=device)

    def grads(b, fn):
        return torch.autograd.grad(fn(w, sigma, 5, 7, antithetic=True, backend=b), (w, sigma), g)

    for fn in (noise.noise_weighted_sum, noise.noise_sigma_weighted_sum):
        for got, want in zip(grads(backend, fn), grads("reference", fn)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_gradcheck():
    theta = torch.randn(9, dtype=torch.float64, requires_grad=True)
    sigma = (torch.rand(9, dtype=torch.float64) + 0.1).requires_grad_(True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    members = torch.arange(2)
    assert torch.autograd.gradcheck(lambda t, s: ref.noise_perturb(t, s, members, 1, 0, True), (theta, sigma))
    assert torch.autograd.gradcheck(lambda a, s: ref.noise_weighted_sum(a, s, members, 9, 1, 0, True), (w, sigma))
    assert torch.autograd.gradcheck(lambda a, s: ref.noise_sigma_weighted_sum(a, s, members, 9, 1, 0, True), (w, sigma))


def _opcheck_cases(ns, device):
    members = torch.arange(3, 6, device=device)
    theta, sigma = torch.randn(11, dtype=torch.float64, device=device), torch.rand(11, dtype=torch.float64, device=device)
    w = torch.randn(6, dtype=torch.float64, device=device)
    words = lambda *shape: torch.randint(0, 2**32, shape, device=device)  # noqa: E731
    return [
        (ns.philox4x32_10, (words(5, 4), words(5, 2))),
        (ns.noise_normal, (members, 11, -3, 1, True)),
        (ns.noise_perturb, (theta.requires_grad_(), sigma.requires_grad_(), members, 7, 0, True)),
        (ns.noise_perturb, (theta.float(), torch.tensor(0.5, device=device), members, 7, 0, False)),
        (ns.noise_weighted_sum, (w.requires_grad_(), sigma, members, 11, 7, 0, True)),
        (ns.noise_sigma_weighted_sum, (w, torch.tensor(0.2, dtype=torch.float64, device=device), members, 11, 7, 0, True)),
    ]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_opcheck_compiled(device):
    if not native.has_kernel("noise_normal", "CPU" if device == "cpu" else "CUDA"):
        pytest.skip(f"gls._C has no {device} noise kernels")
    for op, args in _opcheck_cases(torch.ops.gls, device):
        torch.library.opcheck(op.default, args)


@pytest.mark.skipif(not HAS_TRITON, reason="needs triton")
def test_opcheck_triton():
    device = "cuda" if HAS_CUDA else "cpu"  # the interpreter on CPU (tests/conftest.py)
    for name in ("philox4x32_10", "noise_normal", "noise_perturb", "noise_weighted_sum", "noise_sigma_weighted_sum"):
        assert ops.resolve(name, torch.device(device), "triton")[0] == "triton"
    for op, args in _opcheck_cases(torch.ops.gls_triton, device):
        torch.library.opcheck(op, args)


def test_errors():
    theta = torch.zeros(5)
    with pytest.raises(ValueError, match="non-negative"):
        noise.perturb(theta, -0.1, 0, 4)
    with pytest.raises(ValueError, match="non-negative"):
        noise.noise_weighted_sum(torch.ones(4), torch.tensor([0.1, float("nan"), 0.1, 0.1, 0.1]), 0, 5)
    with pytest.raises(ValueError, match="even population size"):
        noise.perturb(theta, 0.1, 0, 5, antithetic=True)
    with pytest.raises(ValueError, match="even population size"):
        noise.noise_weighted_sum(torch.ones(3), 0.1, 0, 5, antithetic=True)
    for bad in (-1, 2**64):
        with pytest.raises(ValueError, match="unsigned 64-bit"):
            noise.normal(4, seed=bad, member=0)
    with pytest.raises(TypeError, match="seed must be an int"):
        noise.normal(4, seed=1.5, member=0)
    with pytest.raises(ValueError, match="d must be >= 1"):
        noise.normal(0, seed=1, member=0)
    with pytest.raises(ValueError, match="d must be >= 1"):
        noise.noise_weighted_sum(torch.ones(4), 0.1, 0, 0)
    with pytest.raises(ValueError, match="d must be >= 1"):
        noise.perturb(torch.zeros(0), 0.1, 0, 2)
    with pytest.raises(ValueError, match="32-bit word"):
        noise.normal(4, seed=1, member=2**32)
    with pytest.raises(ValueError, match="exceed 2\\*\\*32"):
        noise.population_normal(4, 3, seed=1, member_offset=2**32 - 2)
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        noise.perturb(theta, torch.ones(3), 0, 2)
    with pytest.raises(ValueError, match="population size P must be >= 1"):
        noise.perturb(theta, 0.1, 0, 0)
    with pytest.raises(ValueError, match=r"in \[0, 2\*\*32\)"):
        noise.philox4x32_10(torch.tensor([-1, 0, 0, 0]), torch.tensor([0, 0]))


@pytest.mark.skipif(not native.has_kernel("noise_normal", "CPU"), reason="gls._C not built")
def test_kernel_errors():
    members = torch.arange(2)
    with pytest.raises(RuntimeError, match="d must be >= 1"):
        torch.ops.gls.noise_normal(members, 0, 0, 0, False)
    with pytest.raises(RuntimeError, match="weights must be"):
        torch.ops.gls.noise_weighted_sum(torch.ones(3), torch.tensor(1.0), members, 4, 0, 0, True)
    with pytest.raises(RuntimeError, match="sigma must be a scalar"):
        torch.ops.gls.noise_perturb(torch.ones(4), torch.ones(3), members, 0, 0, False)
    with pytest.raises(RuntimeError, match="members must be a 1-D int64"):
        torch.ops.gls.noise_normal(members.int(), 3, 0, 0, False)
    with pytest.raises(RuntimeError, match="counter must have shape"):
        torch.ops.gls.philox4x32_10(torch.zeros(3, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
