"""noise_sigma_weighted_sum: every backend against the materialised sum_p w_p * ((sigma eps_p)^2 - sigma^2) / sigma, gradients against the reference,
opcheck and errors."""
import pytest
import torch

from gls import native, noise
from gls.reference import noise as ref
from noise_cases import fused_case, materialised

OP = "noise_sigma_weighted_sum"


@pytest.mark.with_reference
@pytest.mark.parametrize("P,d,antithetic", [(1, 1, False), (1, 6, False), (5, 9, False), (6, 130, True), (2, 3, True)])
@pytest.mark.parametrize("sigma_kind", ["scalar", "vector"])
def test_equals_materialised(backend, P, d, antithetic, sigma_kind):
    eps = materialised(P, d, 31, antithetic, offset=4)
    sigma, _ = fused_case(d, sigma_kind)
    w = torch.randn(P, dtype=torch.float64)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-5)):
        s, wd = sigma.to(backend.device, dtype), w.to(backend.device, dtype)
        got = noise.noise_sigma_weighted_sum(wd, s, 31, d, member_offset=4, antithetic=antithetic, backend=backend.name)
        torch.testing.assert_close(got.cpu().double(), (w[:, None] * ((sigma * eps) ** 2 - sigma**2) / sigma).sum(0), rtol=tol, atol=tol * 10)


def test_gradients_match_reference(backend):
    device = backend.device
    w = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    sigma = (torch.rand(7, dtype=torch.float64, device=device) + 0.1).requires_grad_(True)
    g = torch.randn(7, dtype=torch.float64, device=device)

    def grads(b):
        return torch.autograd.grad(noise.noise_sigma_weighted_sum(w, sigma, 5, 7, antithetic=True, backend=b), (w, sigma), g)

    for got, want in zip(grads(backend.name), grads("reference")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_gradcheck():
    sigma = (torch.rand(9, dtype=torch.float64) + 0.1).requires_grad_(True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: ref.noise_sigma_weighted_sum(a, s, torch.arange(2), 9, 1, 0, True), (w, sigma))


def test_opcheck(backend):
    device = backend.device
    members = torch.arange(3, 6, device=device)
    w = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(backend.torch_op().default, (w, torch.tensor(0.2, dtype=torch.float64, device=device), members, 11, 7, 0, True))
