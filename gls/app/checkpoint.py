"""Checkpoints of a training run, written atomically (temp file in the same directory, then os.replace).

A checkpoint holds everything a run needs to continue bit-exactly: the resolved config, the flat
centre weights, the model's buffers (BatchNorm running statistics), the optimiser state (PGPE: sigma,
velocity/Adam moments; RGS: the torch optimiser), the epoch and step counters, the best validation
result and the torch RNG state. The data order and the noise are functions of (seed, epoch) and
(seed, step), so they need no state of their own. Nothing in it depends on the number of processes:
under torchrun rank 0 alone writes it (gls.app.train), and any number of ranks can resume from it.

Also here: a checkpoint's weights into a model (load_weights, model_from_checkpoint) and the atomic
writes of a run's other files (write_text, write_json).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from gls.app import data, models
from gls.net import Network

FORMAT = "gls-checkpoint-1"
LAST, BEST = "last.pt", "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or not a gls checkpoint."""


def save(payload: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **payload}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def resolve(path: str | os.PathLike, which: str = LAST) -> Path:
    """A checkpoint file from a run directory (its `which` file) or a file path."""
    path = Path(path)
    if path.is_dir():
        path = path / which
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    return path


def load(path: str | os.PathLike, which: str = LAST) -> dict:
    path = resolve(path, which)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated or foreign file: say which
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gls training checkpoint")
    return payload


def load_weights(model: nn.Sequential, theta: torch.Tensor, buffers: dict | None = None) -> nn.Sequential:
    """Copy a flat weight vector (d,) (gls.ParamLayout order) and buffers into `model` in place."""
    net = Network.from_module(model)
    params = net.layout.unflatten(theta.detach().reshape(-1))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(params[name][0])
        for name, b in model.named_buffers():
            if buffers is not None and name in buffers:
                b.copy_(buffers[name])
    return model


def model_from_checkpoint(payload: dict) -> tuple[nn.Sequential, dict]:
    """The network of a loaded checkpoint (built from its config, its weights and buffers loaded, in eval
    mode) and that config (a dict, as saved)."""
    cfg = payload["config"]
    mean, std = data.STATS[cfg["dataset"]]
    model = models.build(cfg["net"], data.SHAPES[cfg["dataset"]], mean, std, width=cfg.get("width"))
    return load_weights(model, payload["theta"], payload.get("buffers")).eval(), cfg


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (a temporary file beside it, then os.replace)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: str | os.PathLike, obj) -> None:
    """`obj` as indented JSON (values JSON cannot hold as their str), written atomically."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
