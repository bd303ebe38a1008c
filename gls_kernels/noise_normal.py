"""Triton op gls_triton::noise_normal: (R or 2R, d) float32 population normals (kernel in noise_perturb.py)."""
import torch
from torch import Tensor

from gls_kernels._noise import check_members, rows
from gls_kernels.noise_perturb import population


def _check(members: Tensor, d: int) -> None:
    """Kernel guard."""
    check_members(members, "noise_normal")
    if d < 1:
        raise ValueError(f"noise_normal: the number of elements d must be >= 1, got {d}")


@torch.library.custom_op("gls_triton::noise_normal", mutates_args=())
def noise_normal(members: Tensor, d: int, seed: int, purpose: int, antithetic: bool) -> Tensor:
    """Rows +eps of members (then -eps of the same members with antithetic); see gls.reference.noise."""
    _check(members, d)
    out = torch.empty((rows(members, antithetic), d), dtype=torch.float32, device=members.device)
    return population(None, None, members, d, seed, purpose, antithetic, out)

