"""The CTBench networks: shapes, layer structure, and that gls's IR runs them like PyTorch does."""
import pytest
import torch
from torch import nn

from gls.app import models
from gls.net import Network
from gls.nn import Normalize

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", models.NETS)
def test_builds_and_ir_matches_pytorch(name):
    in_shape = (1, 28, 28)
    model = models.build(name, in_shape, (0.1307,), (0.3081,), width=4 if name.startswith("cnn7") else None).eval()
    assert isinstance(model[0], Normalize)
    assert any(isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d) for m in model) == name.endswith("_bn")
    x = torch.rand(3, *in_shape)
    if name.endswith("_bn"):  # non-trivial running statistics
        with torch.no_grad():
            model.train()(torch.rand(16, *in_shape))
        model.eval()
    net = Network.from_module(model)
    out = net.forward(x)
    assert out.shape == (1, 3, 10)
    torch.testing.assert_close(out[0], model(x), rtol=1e-4, atol=1e-5)


def test_ctbench_architectures():
    def kinds(m):
        return [type(layer).__name__ for layer in m]

    cnn3 = models.build("cnn3", (3, 32, 32), (0.5,) * 3, (0.2,) * 3)
    assert kinds(cnn3) == ["Normalize", "Conv2d", "ReLU", "Conv2d", "ReLU", "Flatten", "Linear"]
    assert (cnn3[1].out_channels, cnn3[1].kernel_size, cnn3[3].kernel_size, cnn3[6].in_features) == (16, (5, 5), (4, 4), 2048)
    cnn5 = models.build("cnn5", (1, 28, 28), (0.5,), (0.2,))
    assert [m.out_channels for m in cnn5 if isinstance(m, nn.Conv2d)] == [16, 16, 32] and cnn5[-1].in_features == 512
    cnn7 = models.build("cnn7_bn", (3, 32, 32), (0.5,) * 3, (0.2,) * 3)
    convs = [m for m in cnn7 if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 128] and [c.stride[0] for c in convs] == [1, 1, 2, 1, 1]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in cnn7) == 5 and sum(isinstance(m, nn.BatchNorm1d) for m in cnn7) == 1
    assert [m for m in cnn7 if isinstance(m, nn.Linear)][0].in_features == 16 * 16 * 128
    mlp = models.build("mlp", (1, 28, 28), (0.5,), (0.2,))
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [256, 64, 10]


def test_bad_names():
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        models.build("resnet", (1, 28, 28), (0.5,), (0.2,))


def test_ibp_init_scales_all_but_the_last_layer():
    torch.manual_seed(0)
    model = models.build("cnn3", (1, 28, 28), (0.5,), (0.2,), init="ibp")
    first, second, last = [m for m in model if isinstance(m, nn.Conv2d | nn.Linear)]
    for layer in (first, second):
        fan_in = layer.weight[0].numel()
        assert float(layer.weight.detach().std()) == pytest.approx((2 * torch.pi) ** 0.5 / fan_in, rel=0.1)
    assert float(last.weight.detach().abs().max()) <= 1 / last.in_features ** 0.5  # PyTorch's default bound
    with pytest.raises(ValueError, match="unknown init"):
        models.build("mlp", (1, 28, 28), (0.5,), (0.2,), init="zero")


def test_paradox_paper_architectures():
    conv = models.build("paradox_conv", (1, 28, 28), (0.5,), (0.2,))
    assert [type(m).__name__ for m in conv] == ["Normalize", "Conv2d", "ReLU", "Flatten", "Linear", "ReLU", "Linear"]
    assert (conv[1].out_channels, conv[1].kernel_size, conv[1].stride) == (16, (4, 4), (2, 2))
    assert (conv[4].in_features, conv[4].out_features, conv[6].out_features) == (16 * 14 * 14, 100, 10)
    narrow = models.build("paradox_conv", (1, 28, 28), (0.5,), (0.2,), width=4)
    assert (narrow[1].out_channels, narrow[4].out_features) == (4, 25)
    fc = models.build("paradox_fc", (1, 28, 28), (0.5,), (0.2,))
    assert [m.out_features for m in fc if isinstance(m, nn.Linear)] == [400, 200, 100, 100, 10]
    with pytest.raises(ValueError, match="paradox_fc needs width >= 4"):
        models.build("paradox_fc", (1, 28, 28), (0.5,), (0.2,), width=2)
