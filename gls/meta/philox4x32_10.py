"""philox4x32_10: input check and fake kernel (integer words: no autograd)."""
from __future__ import annotations

import torch

from gls.meta._noise import check_philox


def fake(counter, key):
    check_philox(counter, key)
    return torch.empty_like(counter, memory_format=torch.contiguous_format)


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::philox4x32_10")(fake)
