"""gls.net: parsing, the flat parameter layout and the population-batched forward pass."""
import pytest
import torch
from torch import nn

import gls
from tests.nets import NETS, build, population


def _stacked(members):
    params, _ = torch.func.stack_module_state(members)
    return {n: t.detach() for n, t in params.items()}


@pytest.mark.parametrize("net", NETS + ["linear", "conv_linear"])
def test_forward_equals_each_member(net):
    model, shape = build(net)
    members = population(model, 3)
    x = torch.rand(4, *shape)
    got = gls.Network.from_module(model).forward(x, _stacked(members))
    assert got.shape[:2] == (3, 4)
    for p, m in enumerate(members):
        torch.testing.assert_close(got[p], m(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gls.Network.from_module(model)(x)[0], model(x), rtol=1e-5, atol=1e-6)


def test_layout_names_shapes_and_round_trip():
    model, _ = build("cnn")
    members = population(model, 2)
    params = _stacked(members)
    layout = gls.Network.from_module(model).layout
    assert list(layout.names) == list(params) == [n for n, _ in model.named_parameters()]
    assert layout.numel == sum(p.numel() for p in model.parameters())
    theta = layout.flatten(params)
    assert theta.shape == (2, layout.numel)
    back = layout.unflatten(theta)
    for n in layout.names:
        torch.testing.assert_close(back[n], params[n], rtol=0, atol=0)
        assert back[n].data_ptr() >= theta.data_ptr()  # a view into theta, not a copy
        assert back[n]._base is theta or back[n]._base is theta._base
    one = layout.unflatten(theta[0])
    assert all(one[n].shape == (1, *s) for n, s in zip(layout.names, layout.shapes))


def test_unflatten_is_differentiable():
    model, shape = build("mlp")
    net = gls.Network.from_module(model)
    theta = net.layout.flatten(net.params()).detach().requires_grad_(True)
    net.forward(torch.rand(2, *shape), net.layout.unflatten(theta)).sum().backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0


def test_own_params_are_a_population_of_one_with_gradients():
    model, shape = build("mlp")
    net = gls.Network.from_module(model)
    params = net.params()
    assert all(t.shape[0] == 1 for t in params.values())
    net.forward(torch.rand(2, *shape)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert gls.Network.from_module(net) is net


def test_normalize_per_channel_and_per_feature():
    norm = gls.nn.Normalize([0.5, 0.25], [0.5, 0.25])
    x = torch.rand(3, 2, 4, 4)
    want = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 0.25], 1)
    torch.testing.assert_close(norm(x), want)
    assert set(dict(norm.named_buffers())) == {"mean", "std"} and not list(norm.parameters())
    flat = gls.nn.Normalize(0.5, 2.0)
    torch.testing.assert_close(flat(torch.ones(2, 3)), torch.full((2, 3), 0.25))
    with pytest.raises(ValueError, match="std must be positive"):
        gls.nn.Normalize(0.0, [1.0, 0.0])


@pytest.mark.parametrize("layers,match", [
    ([nn.Linear(4, 3), nn.Dropout(), nn.Linear(3, 2)], r"layer 1 \(Dropout\)"),
    ([nn.Sequential(nn.Linear(4, 3), nn.Sigmoid()), nn.Linear(3, 2)], r"layer 0\.1 \(Sigmoid\)"),
    ([nn.Conv2d(1, 2, 3, groups=1, padding_mode="reflect", padding=1), nn.Flatten(), nn.Linear(8, 2)], "padding_mode"),
    ([nn.Conv2d(2, 2, 3, groups=2), nn.Flatten(), nn.Linear(8, 2)], "grouped"),
    ([nn.Flatten(start_dim=2), nn.Linear(4, 2)], "Flatten"),
    ([nn.Linear(4, 3), nn.ReLU()], "last layer must be affine"),
    ([nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False), nn.Linear(3, 2)], "running statistics"),
])
def test_refuses_unsupported_layers(layers, match):
    with pytest.raises(ValueError, match=match):
        gls.Network.from_module(nn.Sequential(*layers))


def test_errors_on_shapes_and_params():
    model, shape = build("mlp")
    net = gls.Network.from_module(model)
    with pytest.raises(TypeError, match="nn.Sequential"):
        gls.Network.from_module(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"layer 0 \(Normalize\) has 4 means"):
        net.forward(torch.rand(2, 5))
    with pytest.raises(ValueError, match=r"layer 0 \(Linear\) expects flat inputs of 4 features"):
        gls.Network.from_module(nn.Sequential(nn.Linear(4, 2))).forward(torch.rand(2, 5))
    with pytest.raises(ValueError, match="add nn.Flatten"):
        gls.Network.from_module(nn.Sequential(nn.Linear(4, 2))).forward(torch.rand(2, 1, 2, 2))
    with pytest.raises(ValueError, match=r"layer 0 \(Conv2d\) expects per-sample inputs \(C=3"):
        gls.Network.from_module(nn.Sequential(nn.Conv2d(3, 2, 2), nn.Flatten(), nn.Linear(2, 2))).forward(torch.rand(2, 1, 2, 2))
    params = net.params()
    with pytest.raises(ValueError, match=r"missing \['3.bias'\]"):
        net.forward(torch.rand(2, 4), {n: t for n, t in params.items() if n != "3.bias"})
    two = dict(params, **{"3.bias": params["3.bias"].expand(2, -1)})
    with pytest.raises(ValueError, match="population size"):
        net.forward(torch.rand(2, 4), two)
    with pytest.raises(ValueError, match=r"theta must have shape \(P, \d+\)"):
        net.layout.unflatten(torch.zeros(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        net.forward(torch.rand(2, 4), {n: t.long() for n, t in params.items()})


def test_a_module_used_twice_is_bounded_at_every_position():
    """nn.Sequential(l1, act, l2, act, l3): named_children() drops the second act; the IR must not."""
    torch.manual_seed(1)
    act = nn.ReLU()
    l1, l2, l3 = nn.Linear(3, 5), nn.Linear(5, 4), nn.Linear(4, 2)
    shared = nn.Sequential(l1, act, l2, act, l3)
    separate = nn.Sequential(l1, nn.ReLU(), l2, nn.ReLU(), l3)
    assert gls.Network.from_module(shared).num_relus == 2
    x = torch.randn(6, 3)
    torch.testing.assert_close(gls.Network.from_module(shared)(x)[0], separate(x))
    for method in ("ibp", "hbox", "crown-ibp", "deeppoly"):
        got = gls.compute_bounds(shared, x, 0.0, method=method, domain=None).lower[0]
        torch.testing.assert_close(got, separate(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reuse", ["linear", "batchnorm"])
def test_a_stateful_module_used_twice_is_refused(reuse):
    lin, bn = nn.Linear(4, 4), nn.BatchNorm1d(4).eval()
    mod = lin if reuse == "linear" else bn
    model = nn.Sequential(nn.Linear(4, 4), mod, nn.ReLU(), mod, nn.Linear(4, 2)) if reuse == "batchnorm" else \
        nn.Sequential(lin, nn.ReLU(), lin, nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="same module object as layer"):
        gls.Network.from_module(model)
