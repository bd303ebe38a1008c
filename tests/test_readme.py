"""The README's Python examples run as written (a broken example is a bug in the product)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

pytestmark = pytest.mark.usefixtures("one_thread")


def _blocks():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no python example"
    return blocks


def _run(code: str) -> dict:
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    return scope


def test_readme_bounds_example_runs():
    (code,) = [b for b in _blocks() if "compute_bounds" in b]
    scope = _run(code)
    assert scope["b"].lower.shape == (64, 8, 9) and scope["b"].upper.shape == (64, 8, 9)
    assert (scope["b"].lower <= scope["b"].upper).all()
    assert scope["loss"].shape == (64,)


def test_readme_training_example_runs_and_learns():
    """The population-loss training loop: 16 RGS steps on real MNIST lower the smoothed loss, as the
    README says (about 3.6 -> 2.3)."""
    (code,) = [b for b in _blocks() if "population_loss" in b]
    losses = _run(code)["losses"]
    assert len(losses) == 16
    assert losses[-1] < 0.8 * losses[0], losses

