"""noise_weighted_sum: every backend against the materialised sum_p w_p * sigma * eps_p, gradients against the reference,
opcheck and errors."""
import pytest
import torch

from gls import native, noise
from gls.reference import noise as ref
from noise_cases import (WEIGHTED_SUM_CASES, check_weighted_sum_equals_materialised, check_weighted_sum_gradcheck,
                         check_weighted_sum_gradients)

OP = "noise_weighted_sum"


@pytest.mark.with_reference
@pytest.mark.parametrize("P,d,antithetic", WEIGHTED_SUM_CASES)
@pytest.mark.parametrize("sigma_kind", ["scalar", "vector"])
def test_equals_materialised(backend, P, d, antithetic, sigma_kind):
    check_weighted_sum_equals_materialised(backend, noise.noise_weighted_sum, lambda sigma, eps: sigma * eps, P, d,
                                           antithetic, sigma_kind)


def test_gradients_match_reference(backend):
    check_weighted_sum_gradients(backend, noise.noise_weighted_sum)


def test_reference_gradcheck():
    check_weighted_sum_gradcheck(ref.noise_weighted_sum)


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
