"""What the noise-op tests share: the materialised population noise the fused ops are checked against, and
the checks of the two weighted sums (noise_weighted_sum, noise_sigma_weighted_sum), which differ only in
the term that weights each member's noise."""
import torch

from gls import noise

SEED_BIG = 0xFEDCBA9876543210  # >= 2^63: exercises the signed reinterpretation in the op schemas


def materialised(P, d, seed, antithetic, offset=0):
    return noise.population_normal(P, d, seed=seed, member_offset=offset, antithetic=antithetic, backend="reference").double()


def fused_case(d, sigma_kind):
    """(sigma, theta) in float64: sigma a (d,) vector or a scalar."""
    sigma = torch.rand(d, dtype=torch.float64) + 0.1 if sigma_kind == "vector" else torch.tensor(0.37, dtype=torch.float64)
    return sigma, torch.randn(d, dtype=torch.float64)


WEIGHTED_SUM_CASES = [(1, 1, False), (1, 6, False), (5, 9, False), (6, 130, True), (2, 3, True)]  # (P, d, antithetic)


def check_weighted_sum_equals_materialised(backend, op, term, P, d, antithetic, sigma_kind):
    """op(w, sigma, ...) == sum_p w_p * term(sigma, eps_p) with eps materialised, in float32 and float64."""
    eps = materialised(P, d, 31, antithetic, offset=4)
    sigma, _ = fused_case(d, sigma_kind)
    w = torch.randn(P, dtype=torch.float64)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-5)):
        s, wd = sigma.to(backend.device, dtype), w.to(backend.device, dtype)
        got = op(wd, s, 31, d, member_offset=4, antithetic=antithetic, backend=backend.name)
        torch.testing.assert_close(got.cpu().double(), (w[:, None] * term(sigma, eps)).sum(0), rtol=tol, atol=tol * 10)


def check_weighted_sum_gradients(backend, op):
    """Gradients of op w.r.t. the weights and sigma equal the reference backend's."""
    device = backend.device
    w = torch.randn(4, dtype=torch.float64, device=device, requires_grad=True)
    sigma = (torch.rand(7, dtype=torch.float64, device=device) + 0.1).requires_grad_(True)
    g = torch.randn(7, dtype=torch.float64, device=device)

    def grads(b):
        return torch.autograd.grad(op(w, sigma, 5, 7, antithetic=True, backend=b), (w, sigma), g)

    for got, want in zip(grads(backend.name), grads("reference")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def check_weighted_sum_gradcheck(reference):
    """float64 gradcheck of a reference weighted sum w.r.t. the weights and sigma."""
    sigma = (torch.rand(9, dtype=torch.float64) + 0.1).requires_grad_(True)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, s: reference(a, s, torch.arange(2), 9, 1, 0, True), (w, sigma))
