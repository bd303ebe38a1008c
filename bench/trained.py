"""Trained benchmark networks: short IBP training by gls itself, so unstable-neuron counts are those of
training (random weights leave nearly every ReLU unstable, which no certified network does).

`cnn3` is `gls.app.models` cnn3 on MNIST after `python -m gls.train --net cnn3 --epochs 2 --eps-end-epoch 1
--seed 0` (eps ramped to 0.1 within the first epoch; ~87 % IBP-certified at eps 0.1 on the test set, the
default run of that time being plain-gradient IBP training), and `mlp` the MLP after `python -m gls.train
--net mlp --method grad --relaxation ibp --epochs 2 --eps-end-epoch 1 --seed 0` (the same training, named
explicitly since the default run became RGS with DeepPoly). Their weights are committed (bench/data/) so every
run measures the same networks; when the file
is missing the benchmark retrains it with that command (a few minutes on a 2-core CPU) and saves it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from gls.app import checkpoint, data, train

DATA = Path(__file__).parent / "data"
RECIPES = {"cnn3": ["--net", "cnn3", "--epochs", "2", "--eps-end-epoch", "1", "--seed", "0"],
           "mlp": ["--net", "mlp", "--method", "grad", "--relaxation", "ibp", "--epochs", "2", "--eps-end-epoch", "1",
                   "--seed", "0"]}
EPS = {"cnn3": 0.1, "mlp": 0.1}


def _weights(name: str) -> Path:
    path = DATA / f"{name}_mnist_ibp.pt"
    if not path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            status = train.main(RECIPES[name] + ["--out", tmp, "--certify", "ibp", "--progress", "false"])
            if status != 0:
                raise RuntimeError(f"training the benchmark network {name} failed (exit {status})")
            payload = checkpoint.load(tmp, checkpoint.BEST)
        DATA.mkdir(exist_ok=True)
        torch.save({k: payload[k] for k in ("config", "theta", "buffers")}, path)
    return path


def load(name: str) -> nn.Sequential:
    """The trained network `name` (eval mode)."""
    if name not in RECIPES:
        raise ValueError(f"no trained benchmark network {name!r}; expected one of {sorted(RECIPES)}")
    payload = torch.load(_weights(name), map_location="cpu", weights_only=False)
    model, _ = checkpoint.model_from_checkpoint(payload)
    return model


def mnist_test(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `batch` real MNIST test images (B, 1, 28, 28) in [0, 1] and their labels."""
    split = data.load("mnist").test
    x, y = split.x[:batch], split.y[:batch]
    return x.reshape(batch, *data.SHAPES["mnist"]).float(), y.long()


def build(name: str, batch: int, device: torch.device):
    """(model, inputs, labels, eps) like bench.workload.build, for the trained network `name` + '-trained'."""
    base = name.removesuffix("-trained")
    x, y = mnist_test(batch)
    return load(base).to(device), x.to(device), y.to(device), EPS[base]
