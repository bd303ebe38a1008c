"""Checkpoints of a training run, written atomically (temp file in the same directory, then os.replace).

A checkpoint holds everything a run needs to continue bit-exactly: the resolved config, the flat
centre weights, the model's buffers (BatchNorm running statistics), the optimiser state (PGPE: sigma,
velocity/Adam moments; RGS: the torch optimiser), the epoch and step counters, the best validation
result and the torch RNG state. The data order and the noise are functions of (seed, epoch) and
(seed, step), so they need no state of their own. Nothing in it depends on the number of processes:
under torchrun rank 0 alone writes it (gls.train), and any number of ranks can resume from it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

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
