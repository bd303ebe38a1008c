"""Per-step schedules: the eps ramp of certified training and the step learning-rate decay.

The "smooth" eps ramp is the one of Shi et al. (2021), used by CTBench: from the first step of
``start_epoch`` to the last step of ``end_epoch - 1`` eps grows as ``alpha * t**beta`` (beta = 4) for the
first quarter of the ramp, then linearly, the two pieces meeting with equal value and slope; "linear"
is a straight ramp over the same steps. Before the ramp eps = 0, after it eps = the target.
"""
from __future__ import annotations

from dataclasses import dataclass

SCHEDULES = ("smooth", "linear")


@dataclass(frozen=True)
class EpsSchedule:
    target: float
    start_epoch: int
    end_epoch: int
    steps_per_epoch: int
    kind: str = "smooth"
    beta: float = 4.0
    mid: float = 0.25

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown eps schedule {self.kind!r}; expected one of {SCHEDULES}")
        if self.target < 0:
            raise ValueError(f"eps must be >= 0, got {self.target}")
        if self.end_epoch < self.start_epoch or self.start_epoch < 0:
            raise ValueError(f"need 0 <= eps-start-epoch <= eps-end-epoch, got {self.start_epoch}, {self.end_epoch}")
        if self.steps_per_epoch <= 0:
            raise ValueError("steps_per_epoch must be positive")

    def __call__(self, step: int) -> float:
        """eps for global optimisation step `step` (0-based)."""
        first = self.start_epoch * self.steps_per_epoch
        last = self.end_epoch * self.steps_per_epoch  # eps reaches target here
        if step >= last:
            return self.target
        if step < first:
            return 0.0
        t, length = step - first + 1, last - first
        if self.kind == "linear":
            return self.target * min(t / length, 1.0)
        t_mid = max(int(length * self.mid), 1)
        # alpha*t^beta up to t_mid, then the tangent line from there reaching target at `length`
        alpha = self.target / (t_mid ** self.beta + self.beta * t_mid ** (self.beta - 1) * (length - t_mid))
        if t <= t_mid:
            return alpha * t ** self.beta
        v_mid = alpha * t_mid ** self.beta
        return min(v_mid + (self.target - v_mid) * (t - t_mid) / (length - t_mid), self.target)

    def ramp_fraction(self, step: int) -> float:
        """eps(step) / target in [0, 1] (1 when the target is 0)."""
        return 1.0 if self.target == 0 else self(step) / self.target


def lr_factor(epoch: int, milestones: list[int], gamma: float) -> float:
    """Step decay: the learning rate is multiplied by `gamma` at each milestone epoch passed."""
    return gamma ** sum(epoch >= m for m in milestones)
