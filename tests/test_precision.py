"""gls.precision: exact float32 (no TF32, no cuDNN) is in force during every op of a bound computation,
and the caller's settings are back afterwards, also after an exception. Checked on the CPU through the
same switches the GPU reads (torch's per-backend fp32_precision flags and cudnn.enabled)."""
import pytest
import torch
from torch import nn

import gls
from gls import ops, precision

METHODS = ["ibp", "hbox", "crown-ibp", "deeppoly"]


@pytest.fixture
def fast_settings():
    """A caller that trains fast: TF32 matmul (torch.set_float32_matmul_precision("high")), TF32 cuDNN
    convolutions (torch's default) and cuDNN on; restored afterwards."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.enabled = torch.backends.cudnn.allow_tf32 = True
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32 = before[1:]


def _net_and_batch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(12, 8), nn.ReLU(),
                          nn.Linear(8, 4)).eval()
    return model, torch.rand(2, 1, 5, 5), torch.tensor([0, 3])


def _assert_caller_settings():
    """The fast settings, readable through torch's legacy getters too (torch refuses mixed states)."""
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.enabled and torch.backends.cudnn.allow_tf32 and not precision.in_force()


def test_the_fast_settings_are_not_exact(fast_settings):
    _assert_caller_settings()


def _wrap_every_op(monkeypatch, before_call):
    """Every op wrapper of gls.ops (what gls.bounds and gls.patches call) runs before_call() first."""
    for name in ops.OPS:
        def wrapped(*args, _op=getattr(ops, name), **kwargs):
            before_call()
            return _op(*args, **kwargs)
        monkeypatch.setattr(ops, name, wrapped)


@pytest.mark.parametrize("sound", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_exact_inside_every_op_and_restored_after(fast_settings, monkeypatch, method, sound):
    seen = []
    _wrap_every_op(monkeypatch, lambda: seen.append(precision.in_force()))
    model, x, y = _net_and_batch()
    gls.compute_bounds(model, x, 0.1, method=method, labels=y, sound=sound)
    if not sound:  # gls.sound computes in float64 torch ops of its own
        assert seen and all(seen)
    _assert_caller_settings()


def test_restored_after_an_exception(fast_settings, monkeypatch):
    def failing():
        assert precision.in_force()
        raise RuntimeError("a kernel failed")

    _wrap_every_op(monkeypatch, failing)
    model, x, y = _net_and_batch()
    with pytest.raises(RuntimeError, match="a kernel failed"):
        gls.compute_bounds(model, x, 0.1, method="deeppoly", labels=y)
    _assert_caller_settings()


def test_nested_guards_restore_the_outermost_settings(fast_settings):
    @precision.exact_float32()
    def nested(depth):
        assert precision.in_force()
        if depth:
            nested(depth - 1)
        assert precision.in_force()

    nested(2)
    _assert_caller_settings()


def test_per_backend_switches_set_apart_are_restored():
    """A caller who set only oneDNN's matmul switch (torch's legacy getter then refuses to answer): the
    per-backend switches are set and restored directly."""
    mkldnn = torch.backends.mkldnn.matmul
    before = mkldnn.fp32_precision
    mkldnn.fp32_precision = "tf32"
    try:
        with precision.exact_float32():
            assert precision.in_force()
        assert mkldnn.fp32_precision == "tf32" and not precision.in_force()
    finally:
        mkldnn.fp32_precision = before
