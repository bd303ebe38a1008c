"""noise_weighted_sum: every backend against the materialised sum_p w_p * sigma * eps_p, gradients against the reference,
opcheck and errors."""
import pytest
import torch

from gls import native, noise
from gls.reference import noise as ref
from noise_cases import fused_case, materialised

OP = "noise_weighted_sum"


@pytest.mark.with_reference
@pytest.mark.parametrize("P,d,antithetic", [(1, 1, False), (1, 6, False), (5, 9, False), (6, 130, True), (2, 3, True)])
@pytest.mark.parametrize("sigma_kind", ["scalar", "vector"])
def test_equals_materialised(backend, P, d, antithetic, sigma_kind):
    eps = materialised(P, d, 31, antithetic, offset=4)
    sigma, _ = fused_case(d, sigma_kind)
    w = torch.randn(P, dtype=torch.float64)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-5)):
        s, wd = sigma.to(backend.device, dtype), w.to(backend.device, dtype)
        got = noise.noise_weighted_sum(wd, s, 31, d, member_offset=4, antithetic=antithetic, backend=backend.name)
        torch.testing.assert_close(got.cpu().double(), (w[:, None] * sigma * eps).sum(0), rtol=tol, atol=tol * 10)


def test_gradients_match_reference(backend):
    device = backend.device
    w = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    sigma = (torch.rand(7, dtype=torch.float64, device=device) + 0.1).requires_grad_(True)
    g = torch.randn(7, dtype=torch.float64, device=device)

    def grads(b):
        return torch.autograd.grad(noise.noise_weighted_sum(w, sigma, 5, 7, antithetic=True, backend=b), (w, sigma), g)

    for got, want in zip(grads(backend.name), grads("reference")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_gradcheck():
    sigma = (torch.rand(9, dtype=torch.float64) + 0.1).requires_grad_(True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: ref.noise_weighted_sum(a, s, torch.arange(2), 9, 1, 0, True), (w, sigma))


@pytest.mark.with_reference
def test_elementwise_weights(backend):
    W = torch.randn(4, 33)
    got = noise.noise_weighted_sum(W.to(backend.device), torch.tensor(1.0, device=backend.device), 8, 33, antithetic=True,
                                   backend=backend.name).cpu()
    torch.testing.assert_close(got, (W * noise.population_normal(4, 33, seed=8, antithetic=True)).sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.with_reference
def test_deterministic_across_calls_and_threads(backend):
    device = backend.device
    threads = torch.get_num_threads()
    d = 130 if backend.name == "triton" else 1001  # > one parallel chunk of the CPU kernels
    try:
        torch.set_num_threads(1)
        a = noise.noise_weighted_sum(torch.linspace(-1, 1, 6, device=device), 0.3, 77, d, antithetic=True, backend=backend.name)
        b = noise.population_normal(5, d, seed=77, device=device, backend=backend.name)
        torch.set_num_threads(max(2, threads))
        assert torch.equal(a, noise.noise_weighted_sum(torch.linspace(-1, 1, 6, device=device), 0.3, 77, d, antithetic=True, backend=backend.name))
        assert torch.equal(b, noise.population_normal(5, d, seed=77, device=device, backend=backend.name))
    finally:
        torch.set_num_threads(threads)


def test_opcheck(backend):
    device = backend.device
    members = torch.arange(3, 6, device=device)
    sigma, w = torch.rand(11, dtype=torch.float64, device=device), torch.randn(6, dtype=torch.float64, device=device)
    torch.library.opcheck(backend.torch_op().default, (w.requires_grad_(), sigma, members, 11, 7, 0, True))


def test_errors():
    with pytest.raises(ValueError, match="non-negative"):
        noise.noise_weighted_sum(torch.ones(4), torch.tensor([0.1, float("nan"), 0.1, 0.1, 0.1]), 0, 5)
    with pytest.raises(ValueError, match="even population size"):
        noise.noise_weighted_sum(torch.ones(3), 0.1, 0, 5, antithetic=True)
    with pytest.raises(ValueError, match="d must be >= 1"):
        noise.noise_weighted_sum(torch.ones(4), 0.1, 0, 0)


@pytest.mark.skipif(not native.has_kernel(OP, "CPU"), reason="gls._C not built")
def test_kernel_errors():
    with pytest.raises(RuntimeError, match="weights must be"):
        torch.ops.gls.noise_weighted_sum(torch.ones(3), torch.tensor(1.0), torch.arange(2), 4, 0, 0, True)
