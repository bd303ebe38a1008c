"""The networks of certified training, as in CTBench's networks.py, with input normalisation as layer 0.

Every model is an ``nn.Sequential`` whose first layer is ``gls.nn.Normalize(mean, std)``, so inputs
(and eps) are in pixel space [0, 1]. Names: ``mlp`` (CTBench's fc_3layer: 256-64, small enough for a
CPU), ``cnn3``, ``cnn5``, ``cnn7``, the two networks of the paradox paper (``paradox_conv``,
``paradox_fc``) and their ``_bn`` variants (BatchNorm after every hidden affine layer, as CTBench's
cnn_*layer_bn; cnn3_bn and the paradox ones are the same rule applied to them).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from gls.nn import Normalize


def _bn(bn: bool, c: int, conv: bool = True) -> list[nn.Module]:
    if not bn:
        return []
    return [nn.BatchNorm2d(c) if conv else nn.BatchNorm1d(c)]


def mlp(in_ch: int, in_dim: int, num_classes: int, bn: bool = False, width: int = 64) -> list[nn.Module]:
    return [nn.Flatten(), nn.Linear(in_ch * in_dim * in_dim, 4 * width), *_bn(bn, 4 * width, False), nn.ReLU(),
            nn.Linear(4 * width, width), *_bn(bn, width, False), nn.ReLU(), nn.Linear(width, num_classes)]


def cnn3(in_ch: int, in_dim: int, num_classes: int, bn: bool = False, width: int = 16) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, width, 5, stride=2, padding=2), *_bn(bn, width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), *_bn(bn, 2 * width), nn.ReLU(),
            nn.Flatten(), nn.Linear((in_dim // 4) ** 2 * 2 * width, num_classes)]


def cnn5(in_ch: int, in_dim: int, num_classes: int, bn: bool = False, width: int = 16,
         linear_size: int = 512) -> list[nn.Module]:
    return [nn.Conv2d(in_ch, width, 3, stride=1, padding=1), *_bn(bn, width), nn.ReLU(),
            nn.Conv2d(width, width, 4, stride=2, padding=1), *_bn(bn, width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), *_bn(bn, 2 * width), nn.ReLU(),
            nn.Flatten(), nn.Linear((in_dim // 4) ** 2 * 2 * width, linear_size), *_bn(bn, linear_size, False),
            nn.ReLU(), nn.Linear(linear_size, num_classes)]


def cnn7(in_ch: int, in_dim: int, num_classes: int, bn: bool = False, width: int = 64,
         linear_size: int = 512) -> list[nn.Module]:
    layers: list[nn.Module] = []
    chans = [(in_ch, width, 1), (width, width, 1), (width, 2 * width, 2), (2 * width, 2 * width, 1),
             (2 * width, 2 * width, 1)]
    for c_in, c_out, stride in chans:
        layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), *_bn(bn, c_out), nn.ReLU()]
    return layers + [nn.Flatten(), nn.Linear((in_dim // 2) ** 2 * 2 * width, linear_size),
                     *_bn(bn, linear_size, False), nn.ReLU(), nn.Linear(linear_size, num_classes)]


def paradox_conv(in_ch: int, in_dim: int, num_classes: int, bn: bool = False, width: int = 16) -> list[nn.Module]:
    """The CONV network of Jovanovic et al., "On the Paradox of Certified Training" (TMLR 2022), the one
    behind their MNIST eps = 0.3 table (IBP 86.8 %, hBox 83.7 %, CROWN-IBP 75.4 %, CROWN/DeepPoly 70.2 %
    certified): Conv2d(16 filters, 4x4, stride 2) -> ReLU -> FC 100 -> ReLU -> FC 10. The padding is
    not stated there; 1 is used (as CTBench's 4x4 stride-2 convolutions), so the feature map is
    in_dim/2 square. `width` scales the whole network: `width` filters and round(100 * width / 16)
    hidden units (the paper's network at the default 16), so a narrower CPU-sized copy keeps its shape."""
    hidden = max(1, round(100 * width / 16))
    return [nn.Conv2d(in_ch, width, 4, stride=2, padding=1), *_bn(bn, width), nn.ReLU(), nn.Flatten(),
            nn.Linear((in_dim // 2) ** 2 * width, hidden), *_bn(bn, hidden, False), nn.ReLU(),
            nn.Linear(hidden, num_classes)]


def paradox_fc(in_ch: int, in_dim: int, num_classes: int, bn: bool = False, width: int = 400) -> list[nn.Module]:
    """The FC network of the same paper: fully connected 400-200-100-100-10 with ReLUs; `width` is the
    first hidden layer's size, the others scale with it (width/2, width/4, width/4)."""
    if width < 4:
        raise ValueError(f"paradox_fc needs width >= 4 (its last hidden layers have width/4), got {width}")
    sizes = [in_ch * in_dim * in_dim, width, width // 2, width // 4, width // 4]
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(n_in, n_out), *_bn(bn, n_out, False), nn.ReLU()]
    return layers + [nn.Linear(sizes[-1], num_classes)]


def ibp_init(model: nn.Module) -> nn.Module:
    """Shi et al. (2021)'s initialisation for IBP training (CTBench's "fast" init): every Linear/Conv2d
    weight but the last drawn from N(0, 2*pi / fan_in^2), so interval widths neither explode nor vanish
    with depth at initialisation. Biases keep PyTorch's default."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    with torch.no_grad():
        for m in layers[:-1]:
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, math.sqrt(2 * math.pi) / fan_in)
    return model


INITS = ("default", "ibp")

_BODIES: dict[str, Callable[..., list[nn.Module]]] = {"mlp": mlp, "cnn3": cnn3, "cnn5": cnn5, "cnn7": cnn7,
                                                      "paradox_conv": paradox_conv, "paradox_fc": paradox_fc}
NETS = tuple(n for b in _BODIES for n in (b, b + "_bn"))


def build(name: str, in_shape: tuple[int, int, int], mean, std, num_classes: int = 10,
          width: int | None = None, init: str = "default") -> nn.Sequential:
    """Network `name` (one of NETS) for inputs of shape (C, H, W), with Normalize(mean, std) first;
    `width` overrides the base width (None: CTBench's); `init` is "default" (PyTorch's) or "ibp"."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {INITS}")
    if name not in NETS:
        raise ValueError(f"unknown network {name!r}; expected one of {', '.join(NETS)}")
    base, bn = (name[:-3], True) if name.endswith("_bn") else (name, False)
    c, h, w = in_shape
    if h != w:
        raise ValueError(f"square inputs expected, got {h}x{w}")
    extra = {} if width is None else {"width": width}
    model = nn.Sequential(Normalize(mean, std), *_BODIES[base](c, h, num_classes, bn=bn, **extra))
    return ibp_init(model) if init == "ibp" else model
