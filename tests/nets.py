"""Small random networks for the IR and bound tests (eval mode, random BatchNorm statistics)."""
from __future__ import annotations

import copy

import torch
from torch import nn

from gls.nn import Normalize


def _randomise_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(0.3 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
            if m.affine:
                with torch.no_grad():
                    m.weight.copy_(0.5 + torch.rand(n, generator=gen))
                    m.bias.copy_(0.2 * torch.randn(n, generator=gen))
    return model.eval()


def build(name: str, seed: int = 0) -> tuple[nn.Sequential, tuple[int, ...]]:
    """(model, per-sample input shape) for one of NETS."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "mlp":
        model = nn.Sequential(Normalize([0.4, 0.5, 0.6, 0.5], [0.3, 0.2, 0.25, 0.3]), nn.Linear(4, 7), nn.ReLU(),
                              nn.Linear(7, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Identity(), nn.Linear(6, 3))
        shape = (4,)
    elif name == "mlp_image":  # flatten, standalone BN after a ReLU, two Linears in a row
        model = nn.Sequential(Normalize([0.5, 0.4], [0.25, 0.3]), nn.Flatten(), nn.Linear(8, 6), nn.ReLU(),
                              nn.BatchNorm1d(6), nn.Linear(6, 5), nn.Linear(5, 6, bias=False), nn.ReLU(),
                              nn.Linear(6, 4), nn.BatchNorm1d(4))
        shape = (2, 2, 2)
    elif name == "cnn":  # stride 2 with padding, BN2d folded, 'same' padding, flatten, MLP head
        model = nn.Sequential(Normalize([0.5, 0.4], [0.25, 0.3]), nn.Conv2d(2, 3, 3, stride=2, padding=1),
                              nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, padding="same"), nn.ReLU(),
                              nn.Flatten(), nn.Linear(36, 5), nn.ReLU(), nn.Linear(5, 3))
        shape = (2, 5, 5)
    elif name == "cnn_odd":  # no bias, padding 2, stride 2 on an even size, dilation, standalone BN2d
        model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2, padding=2, bias=False), nn.ReLU(), nn.BatchNorm2d(2),
                              nn.Conv2d(2, 3, 2, stride=1, dilation=2), nn.ReLU(), nn.Flatten(),
                              nn.Linear(12, 3))
        shape = (1, 6, 6)
    elif name == "cnn_window":  # maps large enough that back-substituted rows stay windows (gls.patches)
        model = nn.Sequential(Normalize(0.5, 0.3), nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                              nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                              nn.Conv2d(4, 4, 2, padding=1, dilation=2), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
        shape = (1, 8, 8)
    elif name == "linear":  # no ReLU at all
        model = nn.Sequential(Normalize(0.5, 0.3), nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
        shape = (3,)
    elif name == "conv_linear":  # no ReLU, convolution
        model = nn.Sequential(nn.Conv2d(1, 2, 2, stride=2, padding=1), nn.Flatten(), nn.Linear(18, 3))
        shape = (1, 4, 4)
    else:
        raise KeyError(name)
    return _randomise_bn(model, gen), shape


NETS = ["mlp", "mlp_image", "cnn", "cnn_odd", "cnn_window"]


def population(model: nn.Module, P: int, scale: float = 0.05, seed: int = 1) -> list[nn.Module]:
    """P copies of model with perturbed parameters and the model's own buffers (shared by members)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(P):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        out.append(m)
    return out
