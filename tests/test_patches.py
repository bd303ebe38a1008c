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


def _geometry(name):
    """(model, per-sample shape, domain) of the windowed-path geometries that once crashed."""
    torch.manual_seed(5)
    if name == "relu_first":  # an empty first segment
        layers, shape = [nn.ReLU(), nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)], (2, 2)
    elif name == "relu_relu":  # an empty segment between two ReLUs, dense rows
        layers, shape = [nn.Flatten(), nn.Linear(4, 6), nn.ReLU(), nn.ReLU(), nn.Linear(6, 3)], (4,)
    elif name == "relu_identity_relu":  # the same after a convolution, Identity between
        layers, shape = [nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Identity(), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)], (1, 6, 6)
    elif name == "relu_first_conv":  # ReLU first, then ReLU, Flatten, ReLU after a convolution
        layers, shape = [nn.ReLU(), nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.ReLU(),
                         nn.Linear(50, 4), nn.ReLU(), nn.Linear(4, 3)], (1, 5, 5)
    elif name == "padded_then_strided":  # a window wholly inside the padding in one dimension
        layers, shape = [nn.Conv2d(1, 2, 1, stride=2, padding=2), nn.Conv2d(2, 2, 1, stride=3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4, 3)], (1, 2, 3)
    elif name == "padded_then_strided_relus":  # the same with ReLUs between, after a larger first layer
        layers, shape = [nn.Conv2d(3, 5, 5, stride=2, padding=3, dilation=2), nn.ReLU(),
                         nn.Conv2d(5, 2, 1, stride=2, padding=2, dilation=2), nn.ReLU(), nn.Conv2d(2, 2, 1, stride=3),
                         nn.ReLU(), nn.Flatten(), nn.Linear(4, 3)], (3, 5, 8)
    return nn.Sequential(*layers).double(), shape, (-1.0, 1.0) if name.startswith("relu_first") else (0.0, 1.0)


@pytest.mark.parametrize("method", ["hbox", "crown-ibp", "deeppoly"])
@pytest.mark.parametrize("name", ["relu_first", "relu_relu", "relu_identity_relu", "relu_first_conv",
                                  "padded_then_strided", "padded_then_strided_relus"])
def test_empty_segments_and_windows_outside_the_map_equal_all_rows(name, method):
    """The windowed path once crashed here (IndexError on an empty segment in _backsub; a negative narrow()
    in crop for a window wholly in the padding): bounds now equal rows="all" in float64."""
    model, shape, (lo, hi) = _geometry(name)
    params = _stacked(population(model, 2), torch.float64)
    x = lo + (hi - lo) * torch.rand(3, *shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    kw = dict(method=method, spec=torch.randn(3, 2, 3, dtype=torch.float64), params=params, bound="both",
              domain=(lo, hi))
    for eps in (0.05, 0.5):
        fast = gls.compute_bounds(model, x, eps, **kw)
        full = gls.compute_bounds(model, x, eps, rows="all", **kw)
        _close(fast.lower, full.lower, 1e-6)
        _close(fast.upper, full.upper, 1e-6)


def test_crop_cuts_a_window_outside_the_map_to_zeros():
    """A window larger than the map in one dimension and wholly in the padding in the other is cut to the
    map: its coefficients there are zero, so the cut window is zero (it once padded by a negative amount)."""
    from gls import patches

    coef = torch.randn(1, 1, 2, 3, 1, 7)
    rows = patches.Rows(coef, torch.tensor([-2, -2]).expand(1, 1, 2, 2), (3, 2, 3), (-2, -2))
    cut = patches.crop(rows)
    assert cut.coef.shape == (1, 1, 2, 3, 2, 3) and cut.at == (0, 0)
    assert (cut.coef == 0).all() and (cut.origin == 0).all()
    inside = patches.Rows(coef.expand(1, 1, 2, 3, 4, 7).clone(), torch.tensor([-1, -2]).expand(1, 1, 2, 2), (3, 2, 3),
                          (-1, -2))
    torch.testing.assert_close(patches.crop(inside).coef, inside.coef[..., 1:3, 2:5])
    torch.testing.assert_close(patches.dense(patches.crop(inside)), patches.dense(inside))
