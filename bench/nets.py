"""The benchmark networks (CTBench shapes) and their inputs, as plain nn.Sequential.

mlp:  MNIST 784-100-100-10 (input normalisation first);
cnn3: CTBench `cnn_3layer` on CIFAR-10 (conv 16 5x5/2, conv 32 4x4/2, linear 2048-10), d = 29,930;
cnn7: CTBench `cnn_7layer` on CIFAR-10 (width 64, linear 512, no BatchNorm), d = 17,188,938.
Weights are PyTorch's default initialisation and inputs uniform in [0, 1]: throughput depends on
the shapes and on how many ReLUs are unstable, and an untrained network at the CTBench radii
(MNIST 0.1, CIFAR 2/255) has a realistic share of unstable neurons at the start of training.
"""
from __future__ import annotations

import torch
from torch import nn

from gls.nn import Normalize

MNIST = dict(shape=(1, 28, 28), mean=(0.1307,), std=(0.3081,), eps=0.1)
CIFAR = dict(shape=(3, 32, 32), mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), eps=2 / 255)
NUM_CLASSES = 10


def mlp() -> nn.Sequential:
    return nn.Sequential(
        Normalize(MNIST["mean"], MNIST["std"]), nn.Flatten(),
        nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, NUM_CLASSES),
    )


def cnn3(width: int = 16) -> nn.Sequential:
    return nn.Sequential(
        Normalize(CIFAR["mean"], CIFAR["std"]),
        nn.Conv2d(3, width, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(8 * 8 * 2 * width, NUM_CLASSES),
    )


def cnn7(width: int = 64, linear: int = 512) -> nn.Sequential:
    return nn.Sequential(
        Normalize(CIFAR["mean"], CIFAR["std"]),
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 16 * 2 * width, linear), nn.ReLU(), nn.Linear(linear, NUM_CLASSES),
    )


MODELS = {"mlp": (mlp, MNIST), "cnn3": (cnn3, CIFAR), "cnn7": (cnn7, CIFAR)}


def build(name: str, batch: int, device: torch.device, seed: int = 0):
    """(model in eval mode, inputs (batch, *shape) in [0, 1], labels (batch,), eps) for `name`."""
    if name not in MODELS:
        raise ValueError(f"unknown benchmark network {name!r}; expected one of {sorted(MODELS)}")
    factory, data = MODELS[name]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = factory().eval().to(device)
    x = torch.rand((batch, *data["shape"]), generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch,), generator=gen).to(device)
    return model, x, y, data["eps"]
