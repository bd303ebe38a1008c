"""Memory budgets: the machine's default, and the blocks a bound pass's back-substitutions take under one.

A back-substitution's rows are independent, so gls.bounds splits them into blocks (the numbers do not
depend on the split). Without autograd only one block's tensors are alive at a time. With autograd
every block's graph would be kept until the backward pass (on CNN7, DeepPoly at one MNIST image, 16 GB);
a back-substitution whose graph does not fit is instead run block by block under non-reentrant
``torch.utils.checkpoint``: the forward keeps only each block's result, and the backward recomputes
one block's graph at a time. The gradients are those of the unblocked computation (the same ops on
the same values). Recomputing costs one more forward of those blocks, so a graph that fits is kept.
gls.memory plans with the same accounting (:class:`Blocks`).
"""
from __future__ import annotations

import os

import torch

SAFE_FRACTION = {"cpu": 0.7, "cuda": 0.85}  # default budget: this share of the free memory
BLOCK_BYTES = 1 << 29  # the most one block of rows may hold, whatever the budget (blocks this large already
# amortise the per-block work; larger ones only add to the peak)
ALIVE = 4  # without autograd: tensors of a block's largest step alive at once (input, output, gathered lines)
GRAD_KEEP = 3  # with autograd: numbers per coefficient of every step that a block's graph keeps and its
# backward holds (saved inputs and windows, gradients)


def available_bytes(device: torch.device) -> int:
    """Free memory now: the GPU's free memory, or MemAvailable of /proc/meminfo on the host."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def default_budget(device: torch.device) -> int:
    """The default budget (--max-memory): SAFE_FRACTION of the free memory of `device` (the rest is
    headroom for the allocator, the data set and other processes)."""
    return int(SAFE_FRACTION.get(device.type, 0.7) * available_bytes(device))


class Blocks:
    """How one bound pass blocks its back-substitutions within `budget` bytes.

    A block holds at most min(budget / 4, BLOCK_BYTES). Without autograd a block of rows is sized by its
    largest step (ALIVE tensors of it). With autograd a back-substitution keeps its whole graph (GRAD_KEEP
    numbers per coefficient of every step) while it fits one block and the graphs kept so far stay under
    half the budget; otherwise it goes in blocks under checkpoint, each block's graph within one block.
    """

    def __init__(self, budget: int, grad: bool):
        if budget <= 0:
            raise ValueError(f"budget must be a positive number of bytes, got {budget!r}")
        self.budget = budget
        self.block = min(budget // 4, BLOCK_BYTES)
        self.left = budget // 2  # for graphs kept until the backward pass
        self.grad = grad

    def rows(self, n: int, most: int, total: int, nbytes: int) -> tuple[int, bool]:
        """(rows per block, whether under checkpoint) for n rows whose largest step has `most` coefficients
        and whose steps have `total` in all; nbytes: bytes per coefficient times members x samples."""
        if not self.grad:
            return max(1, self.block // (ALIVE * most * nbytes)), False
        per_row = GRAD_KEEP * total * nbytes
        if n * per_row <= min(self.block, self.left):
            self.left -= n * per_row
            return n, False
        return max(1, self.block // per_row), True
