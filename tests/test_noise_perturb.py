"""noise_perturb: every backend against the materialised theta + sigma * eps, its fused gradients,
opcheck and errors."""
import pytest
import torch

from gls import native, noise
from gls.reference import noise as ref
from noise_cases import fused_case, materialised

OP = "noise_perturb"


@pytest.mark.with_reference
@pytest.mark.parametrize("P,d,antithetic", [(1, 1, False), (1, 6, False), (5, 9, False), (6, 130, True), (2, 3, True)])
@pytest.mark.parametrize("sigma_kind", ["scalar", "vector"])
def test_equals_materialised(backend, P, d, antithetic, sigma_kind):
    eps = materialised(P, d, 31, antithetic, offset=4)
    sigma, theta = fused_case(d, sigma_kind)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-5)):
        s, t = sigma.to(backend.device, dtype), theta.to(backend.device, dtype)
        pert = noise.perturb(t, s, 31, P, member_offset=4, antithetic=antithetic, backend=backend.name)
        assert pert.dtype == dtype and pert.shape == (P, d)
        torch.testing.assert_close(pert.cpu().double(), theta + sigma * eps, rtol=tol, atol=tol * 10)


@pytest.mark.with_reference
@pytest.mark.parametrize("sigma_kind", ["scalar", "vector"])
def test_gradients(backend, sigma_kind):
    P, d, device = 6, 19, backend.device
    theta = torch.randn(d, dtype=torch.float64, device=device, requires_grad=True)
    sigma = (torch.rand(d if sigma_kind == "vector" else (), dtype=torch.float64, device=device) + 0.1).requires_grad_(True)
    g = torch.randn(P, d, dtype=torch.float64, device=device)
    out = noise.perturb(theta, sigma, 3, P, antithetic=True, backend=backend.name)
    gt, gs = torch.autograd.grad(out, (theta, sigma), g)
    eps = materialised(P, d, 3, True).to(device)
    torch.testing.assert_close(gt, g.sum(0))
    torch.testing.assert_close(gs, (g * eps).sum(0) if sigma_kind == "vector" else (g * eps).sum(), rtol=1e-6, atol=1e-6)


def test_reference_gradcheck():
    theta = torch.randn(9, dtype=torch.float64, requires_grad=True)
    sigma = (torch.rand(9, dtype=torch.float64) + 0.1).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, s: ref.noise_perturb(t, s, torch.arange(2), 1, 0, True), (theta, sigma))


def test_opcheck(backend):
    device = backend.device
    members = torch.arange(3, 6, device=device)
    theta, sigma = torch.randn(11, dtype=torch.float64, device=device), torch.rand(11, dtype=torch.float64, device=device)
    op = backend.torch_op().default
    torch.library.opcheck(op, (theta.requires_grad_(), sigma.requires_grad_(), members, 7, 0, True))
    torch.library.opcheck(op, (theta.float(), torch.tensor(0.5, device=device), members, 7, 0, False))


def test_errors():
    theta = torch.zeros(5)
    with pytest.raises(ValueError, match="non-negative"):
        noise.perturb(theta, -0.1, 0, 4)
    with pytest.raises(ValueError, match="even population size"):
        noise.perturb(theta, 0.1, 0, 5, antithetic=True)
    with pytest.raises(ValueError, match="d must be >= 1"):
        noise.perturb(torch.zeros(0), 0.1, 0, 2)
    with pytest.raises(ValueError, match="sigma must be a scalar or have shape"):
        noise.perturb(theta, torch.ones(3), 0, 2)
    with pytest.raises(ValueError, match="population size P must be >= 1"):
        noise.perturb(theta, 0.1, 0, 0)


@pytest.mark.skipif(not native.has_kernel(OP, "CPU"), reason="gls._C not built")
def test_kernel_errors():
    with pytest.raises(RuntimeError, match="sigma must be a scalar"):
        torch.ops.gls.noise_perturb(torch.ones(4), torch.ones(3), torch.arange(2), 0, 0, False)
