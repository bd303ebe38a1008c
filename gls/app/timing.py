"""Honest time: a run's duration predicted from steps timed before training, and an ETA that knows the eps ramp.

A step's cost depends on eps: at eps = 0 no bounds are computed; IBP and CROWN-IBP then cost the
same at any eps > 0, while hBox and DeepPoly back-substitute one row per unstable neuron, and more
neurons become unstable as eps grows. Before training (gls.train), one step is timed at eps = 0 (t0)
and one at the target eps (t1), two of each when they are short (taking the faster: a first call
warms up). A step is predicted to take ``t0 + (t1 - t0) * cost_fraction(step)`` (see
:func:`cost_fraction`), summed over the schedule. While training, the ETA scales the prediction of
the steps left by the ratio of the time actually spent to the time predicted for the steps done, so a
machine busier or quieter than during the timing is accounted for.
"""
from __future__ import annotations

import itertools
import time
from typing import Callable


def cost_fraction(sched, relaxation: str, robust_weight: float) -> Callable[[int], float]:
    """Where a step lies between the eps-0 step (0) and the target-eps step (1): 0 while eps or the
    robust weight is 0 (no bounds), 1 for IBP / CROWN-IBP at any eps > 0, and the ramp fraction
    eps / target for hBox / DeepPoly, whose refined rows (the unstable neurons) grow with eps."""
    grows = relaxation in ("hbox", "deeppoly")

    def fraction(step: int) -> float:
        if robust_weight <= 0 or sched(step) <= 0:
            return 0.0
        return sched.ramp_fraction(step) if grows else 1.0

    return fraction


def format_duration(seconds: float) -> str:
    """3 s, 4 min 10 s, 2 h 05 min, 3 d 4 h."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def time_call(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def best_of(fn: Callable[[], object], reps: int) -> float:
    """Best wall time of `reps` calls of `fn` after one warm-up call."""
    fn()
    return min(time_call(fn) for _ in range(max(reps, 1)))


class RunClock:
    """Predicted seconds of every step from (t0, t1) and the eps ramp, and the ETA of a run in progress.

    ramp(step) places global step `step` between the two timed steps (:func:`cost_fraction`); `val_s`
    is the time of one validation, paid after every epoch."""

    def __init__(self, ramp: Callable[[int], float], t0: float, t1: float, total_steps: int, steps_per_epoch: int,
                 val_s: float = 0.0):
        self.t0, self.t1, self.val_s = t0, t1, val_s
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        per_step = [t0 + (t1 - t0) * ramp(s) for s in range(total_steps)]
        self._cum = [0.0, *itertools.accumulate(per_step)]  # predicted seconds of steps [0, s)
        self._spent = self._predicted = 0.0

    def predicted(self, first: int, last: int) -> float:
        """Predicted seconds of steps [first, last), without validations."""
        first, last = max(0, min(first, self.total_steps)), max(0, min(last, self.total_steps))
        return self._cum[last] - self._cum[first] if last > first else 0.0

    def total(self) -> float:
        """Predicted seconds of the whole run: every step and a validation after every epoch."""
        return self.predicted(0, self.total_steps) + self.val_s * -(-self.total_steps // self.steps_per_epoch)

    def observe(self, first: int, last: int, seconds: float) -> None:
        """Steps [first, last) took `seconds`."""
        self._spent += seconds
        self._predicted += self.predicted(first, last)

    def observe_validation(self, seconds: float) -> None:
        """A validation took `seconds`: the later ones are predicted to take as long."""
        self.val_s = seconds

    @property
    def ratio(self) -> float:
        """Actual / predicted time of the steps so far (1 before any was observed)."""
        return self._spent / self._predicted if self._predicted > 0 else 1.0

    def eta(self, step: int) -> float:
        """Seconds left after global step `step`: the steps left (their prediction corrected by `ratio`)
        and the validations of the epochs not yet validated (an epoch end at `step` counts as validated)."""
        epochs_left = -(-self.total_steps // self.steps_per_epoch) - step // self.steps_per_epoch
        return self.ratio * self.predicted(step, self.total_steps) + self.val_s * max(epochs_left, 0)
