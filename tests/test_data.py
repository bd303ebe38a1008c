"""Dataset loading (bundled MNIST, IDX files, CIFAR-10 python batches), batching and augmentation."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from gls.app import data
from gls.app.schedule import EpsSchedule, lr_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bundled_mnist_splits():
    assert data.bundled_mnist_path() is not None
    ds = data.load("mnist")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50_000, 10_000, 10_000)
    assert ds.in_shape == (1, 28, 28) and ds.train.x.dtype == torch.float32
    assert 0.0 <= float(ds.test.x.min()) and float(ds.test.x.max()) <= 1.0
    assert set(ds.test.y.unique().tolist()) == set(range(10))


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_mnist_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (10_010, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", rng.integers(0, 10, 10_010))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.full((5, 28, 28), 255))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    ds = data.load("mnist", tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 10_000, 5)
    assert torch.all(ds.test.x == 1.0) and ds.test.y.tolist() == [0, 1, 2, 3, 4]


def test_cifar_batches(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
                         "labels": [i] * 10_000}, f)
    ds = data.load("cifar10", tmp_path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (45_000, 5_000, 10_000)
    assert ds.in_shape == (3, 32, 32) and int(ds.test.y[0]) == 5


def test_missing_data_says_what_to_provide(tmp_path):
    with pytest.raises(data.DataError, match="data_batch_1.*--data-dir"):
        data.load("cifar10", tmp_path)
    with pytest.raises(data.DataError, match="--data-dir"):
        data.load("cifar10")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("imagenet")
    bad = tmp_path / "bad"
    bad.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (bad / stem).write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(data.DataError, match="not an unsigned-byte IDX file"):
        data.load("mnist", bad)
    (bad / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(data.DataError, match="missing t10k-labels-idx1-ubyte"):
        data.load("mnist", bad)


def test_batches_are_reproducible_and_cover_the_split():
    split = data.Split(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    order = lambda seed: [y.tolist() for _, y in data.batches(split, 4, shuffle=True,  # noqa: E731
                                                             generator=torch.Generator().manual_seed(seed))]
    assert order(1) == order(1) and order(1) != order(2)
    assert sorted(sum(order(1), [])) == list(range(10)) and [len(b) for b in order(1)] == [4, 4, 2]
    assert data.num_batches(10, 4) == 3 and data.num_batches(10, 4, drop_last=True) == 2
    with pytest.raises(ValueError, match="batch_size"):
        next(data.batches(split, 0, shuffle=False))


def test_cifar_augmentation_is_flip_and_edge_padded_crop():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = data.augment_cifar(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(torch.cat([x, x.flip(-1)]), (2, 2, 2, 2), mode="replicate")
    for i in range(2):  # each output is some flip + crop of its own input
        found = any(torch.equal(out[i], padded[i + 2 * f, :, dy:dy + 32, dx:dx + 32])
                    for f in (0, 1) for dy in range(5) for dx in range(5))
        assert found


def test_eps_schedules():
    s = EpsSchedule(0.3, start_epoch=1, end_epoch=3, steps_per_epoch=10)
    values = [s(i) for i in range(40)]
    assert values[:10] == [0.0] * 10 and values[30:] == [0.3] * 10
    assert all(b >= a for a, b in zip(values, values[1:]))  # monotone
    lin = EpsSchedule(0.3, 0, 2, 5, kind="linear")
    assert lin(4) == pytest.approx(0.15) and lin(9) == pytest.approx(0.3)
    assert EpsSchedule(0.3, 2, 2, 5)(9) == 0.0 and EpsSchedule(0.3, 2, 2, 5)(10) == 0.3
    with pytest.raises(ValueError, match="eps"):
        EpsSchedule(-0.1, 0, 1, 1)
    with pytest.raises(ValueError, match="schedule"):
        EpsSchedule(0.1, 0, 1, 1, kind="cosine")
    assert lr_factor(5, [3, 5], 0.2) == pytest.approx(0.04) and lr_factor(2, [3, 5], 0.2) == 1.0
