"""noise_normal: input check and fake kernel (no floating-point input: no autograd)."""
from __future__ import annotations

import torch

from gls.meta._noise import check_dim, check_members, rows


def fake(members, d, seed, purpose, antithetic):
    check_members(members, "noise_normal")
    check_dim(d, "noise_normal")
    return members.new_empty((rows(members, antithetic), d), dtype=torch.float32)


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::noise_normal")(fake)
