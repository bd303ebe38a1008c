"""Per-(member, sample) rows and windowed conv back-substitution (gls.patches) equal the all-rows dense
computation (compute_bounds(rows="all"), the previous algorithm), in values and in gradients, on
random and trained MLPs and CNNs."""
from pathlib import Path

import pytest
import torch
from torch import nn

import gls
from gls.app import checkpoint, data
from tests.nets import build, population

pytestmark = pytest.mark.usefixtures("one_thread")

METHODS = ["ibp", "hbox", "crown-ibp", "deeppoly"]
TRAINED_CNN3 = Path(__file__).resolve().parents[1] / "bench" / "data" / "cnn3_mnist_ibp.pt"


def _stacked(members, dtype):
    params, _ = torch.func.stack_module_state(members)
    return {n: t.detach().to(dtype) for n, t in params.items()}


def _close(got, want, rel=1e-5):
    """|got - want| <= rel * (the bound's magnitude), as the issue states the tolerance."""
    scale = want.abs().clamp(min=1.0)
    assert ((got - want).abs() <= rel * scale).all(), (got - want).abs().max()


def _compare(model, x, eps, labels, params, method, rel=1e-5):
    kw = dict(method=method, labels=labels, params=params, bound="both")
    fast = gls.compute_bounds(model, x, eps, **kw)
    full = gls.compute_bounds(model, x, eps, rows="all", **kw)
    _close(fast.lower, full.lower, rel)
    _close(fast.upper, full.upper, rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("net", ["mlp", "cnn", "cnn_odd", "cnn_window"])
def test_random_nets_equal_all_rows(net, method, P, dtype):
    model, shape = build(net)
    model = model.to(dtype)
    params = _stacked(population(model, P), dtype)
    x = torch.rand(4, *shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    _compare(model, x, 0.05, torch.tensor([0, 1, 2, 0]), params, method, 1e-5 if dtype == torch.float32 else 1e-10)


@pytest.mark.parametrize("method", ["hbox", "crown-ibp", "deeppoly"])
@pytest.mark.parametrize("net", ["cnn_window", "mlp"])
def test_gradients_equal_all_rows(net, method):
    model, shape = build(net)
    model = model.double()
    netw = gls.Network.from_module(model)
    theta = netw.layout.flatten(_stacked(population(model, 2), torch.float64))
    x = torch.rand(3, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2])

    def grad(all_rows):
        th = theta.clone().requires_grad_(True)
        b = gls.compute_bounds(netw, x, 0.05, method=method, labels=labels, params=netw.layout.unflatten(th),
                               bound="both", rows="all" if all_rows else "unstable")
        (b.lower.sum() - 0.5 * b.upper.sum()).backward()
        return th.grad

    torch.testing.assert_close(grad(False), grad(True), rtol=1e-9, atol=1e-10)


def test_gradcheck_through_windows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.ReLU(),
                          nn.Flatten(), nn.Linear(18, 2)).double()
    netw = gls.Network.from_module(model)
    theta = netw.layout.flatten(netw.params()).detach().requires_grad_(True)
    x = torch.rand(1, 1, 5, 5, dtype=torch.float64)

    def f(th):
        return gls.compute_bounds(netw, x, 0.2, method="deeppoly", labels=torch.tensor([1]),
                                  params=netw.layout.unflatten(th), bound="both")

    b = f(theta)
    assert torch.autograd.gradcheck(lambda th: tuple(f(th)), (theta,))
    assert b.lower.requires_grad


@pytest.fixture(scope="module")
def mnist():
    try:
        split = data.load("mnist").test
    except data.DataError as exc:
        pytest.skip(f"MNIST not available: {exc}")
    return split.x[:6].reshape(6, 1, 28, 28).float(), split.y[:6].long()


@pytest.mark.parametrize("P", [1, 2])
@pytest.mark.parametrize("method", ["hbox", "deeppoly"])
def test_trained_cnn3_equals_all_rows(mnist, method, P):
    payload = torch.load(TRAINED_CNN3, weights_only=False)
    model, _ = checkpoint.model_from_checkpoint(payload)
    x, y = mnist
    x, y = x[:3], y[:3]
    params = _stacked(population(model, P, scale=0.01), torch.float32)
    _compare(model, x, 0.1, y, params, method)


def test_trained_mlp_equals_all_rows(mnist):
    """A small MLP after a few hundred steps of IBP training: realistic unstable-neuron counts."""
    split = data.load("mnist").train
    x_tr, y_tr = split.x[:2048].reshape(-1, 784).float(), split.y[:2048].long()
    torch.manual_seed(0)
    model = nn.Sequential(gls.nn.Normalize(0.1307, 0.3081), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                          nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(150):
        i = torch.randint(0, 2048, (64,))
        lb = gls.compute_bounds(model, x_tr[i], 0.05 * min(1.0, step / 100), method="ibp", labels=y_tr[i]).lower
        loss = gls.robust_loss(lb).mean() + nn.functional.cross_entropy(model(x_tr[i]), y_tr[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, y = mnist
    params = _stacked(population(model, 2, scale=0.01), torch.float32)
    for method in METHODS:
        _compare(model, x.reshape(6, 784), 0.05, y, params, method)
