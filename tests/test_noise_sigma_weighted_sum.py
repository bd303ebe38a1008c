"""noise_sigma_weighted_sum: every backend against the materialised sum_p w_p * ((sigma eps_p)^2 - sigma^2) / sigma, gradients against the reference,
opcheck and errors."""
import pytest
import torch

from gls import noise
from gls.reference import noise as ref
from noise_cases import (WEIGHTED_SUM_CASES, check_weighted_sum_equals_materialised, check_weighted_sum_gradcheck,
                         check_weighted_sum_gradients)

OP = "noise_sigma_weighted_sum"


@pytest.mark.with_reference
@pytest.mark.parametrize("P,d,antithetic", WEIGHTED_SUM_CASES)
@pytest.mark.parametrize("sigma_kind", ["scalar", "vector"])
def test_equals_materialised(backend, P, d, antithetic, sigma_kind):
    def term(sigma, eps):
        return ((sigma * eps) ** 2 - sigma**2) / sigma

    check_weighted_sum_equals_materialised(backend, noise.noise_sigma_weighted_sum, term, P, d, antithetic, sigma_kind)


def test_gradients_match_reference(backend):
    check_weighted_sum_gradients(backend, noise.noise_sigma_weighted_sum)


def test_reference_gradcheck():
    check_weighted_sum_gradcheck(ref.noise_sigma_weighted_sum)


def test_opcheck(backend):
    device = backend.device
    members = torch.arange(3, 6, device=device)
    w = torch.randn(6, dtype=torch.float64, device=device, requires_grad=True)
    torch.library.opcheck(backend.torch_op().default, (w, torch.tensor(0.2, dtype=torch.float64, device=device), members, 11, 7, 0, True))
