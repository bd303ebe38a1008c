"""Memory budgets: the machine's default, and the blocks a bound pass's back-substitutions take under one.

A back-substitution's rows are independent, so gls.bounds splits them into blocks (the numbers do not
depend on the split). Without autograd only one block's tensors are alive at a time. With autograd
every block's graph would be kept until the backward pass (on CNN7, DeepPoly at one MNIST image, 16 GB);
a back-substitution whose graph does not fit is instead run block by block under non-reentrant
``torch.utils.checkpoint``: the forward keeps only each block's result, and the backward recomputes
one block's graph at a time. The gradients are those of the unblocked computation (the same ops on
the same values). Recomputing costs one more forward of those blocks, so a graph that fits is kept.
gls.memory plans with the same accounting (:class:`Blocks`).

A budget bounds the tensors alive; what the process holds can exceed it where the C library keeps freed
memory (gls.app.heap, as gls.train runs): blocks of different sizes, one after another, each took fresh
pages beside the freed ones (CNN7 DeepPoly with backward, B = 8, a 1.61 GB budget: the resident set rose
1.89 GB). A checkpointed block, computed or recomputed, therefore first gives the free heap back
(give_back_free_memory) when it holds more than two blocks or a quarter of the budget, the smaller
(Blocks.free): graphs kept (at most half the budget), one block (at most a quarter) and that much free
memory stay within it. It costs time, the blocks faulting their pages in again (CNN7, B = 8, 1.61 GB:
0.87 GB rise in 590 s, against 1.90 GB in 429-465 s without).
"""
from __future__ import annotations

import ctypes
import functools
import os

import torch

SAFE_FRACTION = {"cpu": 0.7, "cuda": 0.85}  # default budget: this share of the free memory
BLOCK_BYTES = 1 << 29  # the most one block of rows may hold, whatever the budget (blocks this large already
# amortise the per-block work; larger ones only add to the peak)
FREE_BLOCKS = 2  # free heap a checkpointed block tolerates, in blocks (at most a quarter of the budget):
# enough for the next blocks to reuse; at the default budget a quarter (3.9 GB here) let CNN7's B = 8 pass
# with backward rise 4.29 GB
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


@functools.cache
def glibc() -> ctypes.CDLL | None:
    """The C library of this process where it is glibc (whose malloc these tunings are for), else None."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return None
    return libc


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]


def free_heap_bytes() -> int | None:
    """Bytes free in the C heap (glibc's mallinfo2().fordblks); None where not glibc or before glibc 2.33."""
    libc = glibc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    return int(libc.mallinfo2().fordblks)


def give_back_free_memory(above: int = 0) -> bool:
    """Return the C heap's free pages to the system (glibc's malloc_trim(0)) when more than `above` bytes
    are free (unknown: always); True if it did, False where not glibc or not needed."""
    libc = glibc()
    if libc is None:
        return False
    if above > 0:
        free = free_heap_bytes()
        if free is not None and free <= above:
            return False
    libc.malloc_trim(0)
    return True


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
        self.free = min(budget // 4, FREE_BLOCKS * self.block)  # free heap a checkpointed block tolerates
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
