"""Whole computations on the emulated CUDA kernels (the `cuda-emu` backend: csrc/cuda run on the CPU by
csrc/emu) against the `cpp` backend: compute_bounds for every method on the trained cnn3 of bench/ and on
the MLP, at P = 1 and P = 4, with the gradients of the robust loss, and one RGS and one PGPE step with
every op (noise included) on the emulated kernels. Both backends compute the same real numbers in a
different order, so they agree to float32 rounding: within 1e-5 of the values' scale."""
from functools import lru_cache

import pytest
import torch

import gls
from gls import native
from gls.app import models
from gls.objective import population_loss
from gls.smoothing import PGPE, RGS

pytestmark = [
    pytest.mark.skipif(not native.EMU_AVAILABLE, reason=f"gls._C_cuda_emu not built: {native.EMU_LOAD_ERROR}"),
    pytest.mark.skipif(not native.AVAILABLE, reason="gls._C not built"),
]

METHODS = ["ibp", "hbox", "crown-ibp", "deeppoly"]
B = 3


def _close(got, want):
    """Within 1e-5 relative, the scale being the largest magnitude of the result."""
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max().clamp(min=1e-30)))


@pytest.fixture(scope="module")
def mnist():
    from bench.trained import mnist_test

    return mnist_test(B)


@lru_cache(maxsize=None)
def _network(name):
    """(net, theta) of the trained cnn3 of bench/ or the MLP of gls.app.models (IBP initialisation)."""
    if name == "cnn3-trained":
        from bench.trained import load

        model = load("cnn3")
    else:
        torch.manual_seed(0)
        model = models.build("mlp", (1, 28, 28), (0.1307,), (0.3081,), init="ibp").eval()
    net = gls.Network.from_module(model)
    return net, net.layout.flatten(net.params())[0].detach()


def _population(theta, P):
    """P members near theta (theta itself for P = 1), as a params dict."""
    return gls.noise.perturb(theta, 0.002, seed=3, members=P) if P > 1 else theta[None]


@pytest.mark.parametrize("P", [1, 4])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["cnn3-trained", "mlp"])
def test_bounds_and_gradients_equal_cpp(name, mnist, method, P):
    net, theta = _network(name)
    x, y = mnist
    pop = _population(theta, P)
    results = {}
    for backend in ("cpp", "cuda-emu"):
        leaf = pop.clone().requires_grad_(True)
        b = gls.compute_bounds(net, x, 0.1, method=method, labels=y, params=net.layout.unflatten(leaf),
                               bound="both", backend=backend)
        loss = gls.robust_loss(b.lower).sum()
        results[backend] = (b.lower.detach(), b.upper.detach(), torch.autograd.grad(loss, leaf)[0])
    for got, want in zip(results["cuda-emu"], results["cpp"]):
        _close(got, want)


def _smoothing_step(net, theta, x, y, make):
    opt = make(theta.clone())
    loss_fn = population_loss(net, x, y, eps=0.1, relaxation="deeppoly", robust_weight=0.5)
    stats = opt.step(loss_fn, 0)
    return opt.theta.detach().clone(), stats.loss_mean


@pytest.mark.parametrize("method", ["rgs", "pgpe"])
def test_a_smoothing_step_equals_cpp(mnist, method, monkeypatch):
    """Every op of the step (perturbation, bounds, the noise reductions) on one backend at a time, on
    the trained cnn3."""
    net, theta = _network("cnn3-trained")
    x, y = mnist
    if method == "rgs":
        def make(t):
            return RGS(t, sigma=0.01, samples=2, seed=0, optimizer=lambda p: torch.optim.Adam(p, lr=1e-3))
    else:
        def make(t):
            return PGPE(t, sigma=0.01, lr=0.01, population=4, seed=0)
    out = {}
    for backend in ("cpp", "cuda-emu"):
        monkeypatch.setenv("GLS_BACKEND", backend)
        out[backend] = _smoothing_step(net, theta, x, y, make)
    _close(out["cuda-emu"][0], out["cpp"][0])
    assert abs(out["cuda-emu"][1] - out["cpp"][1]) <= 1e-5 * abs(out["cpp"][1])
