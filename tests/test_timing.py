"""gls.app.timing: the run-time prediction follows the eps ramp, and the ETA corrects it by what was measured."""
import pytest

from gls.app.schedule import EpsSchedule
from gls.app.timing import RunClock, cost_fraction, format_duration


def test_prediction_follows_the_eps_ramp():
    sched = EpsSchedule(0.3, 1, 3, 10, "linear")  # eps 0 in epoch 0, ramps over epochs 1-2, then 0.3
    clock = RunClock(sched.ramp_fraction, t0=1.0, t1=5.0, total_steps=50, steps_per_epoch=10, val_s=2.0)
    assert clock.predicted(0, 10) == pytest.approx(10.0)  # before the ramp: eps-0 steps
    assert clock.predicted(30, 50) == pytest.approx(100.0)  # after it: target-eps steps
    ramp = sum(1 + 4 * sched.ramp_fraction(s) for s in range(10, 30))
    assert clock.predicted(10, 30) == pytest.approx(ramp)
    assert clock.total() == pytest.approx(10 + ramp + 100 + 5 * 2.0)  # and a validation per epoch
    # a flat ETA (total / steps) would be wrong on both sides of the ramp
    assert clock.eta(0) == pytest.approx(clock.total())
    assert clock.eta(30) == pytest.approx(100 + 2 * 2.0)


def test_eta_is_corrected_by_the_measured_time():
    clock = RunClock(lambda s: 1.0, t0=1.0, t1=2.0, total_steps=10, steps_per_epoch=10)
    assert clock.ratio == 1.0
    clock.observe(0, 4, 16.0)  # 4 steps predicted at 2 s took 4 s each: a busier machine
    assert clock.ratio == pytest.approx(2.0) and clock.eta(4) == pytest.approx(2.0 * 12.0)
    clock.observe_validation(3.0)
    assert clock.eta(4) == pytest.approx(24.0 + 3.0) and clock.eta(10) == pytest.approx(0.0)


def test_format_duration():
    assert [format_duration(s) for s in (3.2, 250, 7500, 3 * 86400 + 4 * 3600)] == \
           ["3 s", "4 min 10 s", "2 h 05 min", "3 d 4 h"]


def test_cost_fraction_by_relaxation():
    """IBP / CROWN-IBP cost the same at any eps > 0 (the README's RGS preset took 258 s for its first ramp
    step as at the target eps); DeepPoly's cost follows the unstable neurons, so the ramp."""
    sched = EpsSchedule(0.3, 1, 3, 10, "linear")
    flat, grows = cost_fraction(sched, "crown-ibp", 1.0), cost_fraction(sched, "deeppoly", 1.0)
    assert flat(5) == grows(5) == 0.0  # eps 0: no bounds
    assert flat(10) == 1.0 and grows(10) == pytest.approx(sched.ramp_fraction(10)) and grows(10) < 0.1
    assert cost_fraction(sched, "deeppoly", 0.0)(40) == 0.0  # no robust term: never any bounds
