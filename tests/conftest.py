"""Test set-up: Triton's interpreter on machines without a GPU, the `cuda` marker, and the `slow` marker
(larger runs, skipped unless selected with `-m slow`).

TRITON_INTERPRET must be set before triton is first imported, so it is set here, at collection.
"""
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if "slow" not in (config.getoption("-m") or ""):
        larger = pytest.mark.skip(reason="a larger run: select it with -m slow")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(larger)
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, for the training-layer modules (pytestmark = usefixtures("one_thread")): on a
    shared 2-core machine torch's busy-waiting threads ran them 10x slower. Kernel tests keep the
    default count so the parallel paths are exercised."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
