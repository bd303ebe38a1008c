"""Training and evaluation on several processes: torch.distributed under ``torchrun``.

``torchrun --nproc-per-node N -m gls.train ...`` starts N ranks (gloo on CPU, NCCL on GPU, rank r on
``cuda:<local rank>``); without torchrun's environment (``WORLD_SIZE`` unset or 1) nothing here
touches torch.distributed and training is the single-process code path. No weights and no noise
cross the wire: every member's noise is regenerated from the Philox stream keyed by (seed, step).

* PGPE: rank r evaluates the antithetic pairs of its contiguous slice; one all-gather of their losses
  gives every rank all P of them; every rank then runs the single-process update (centred ranks, the
  noise-regenerating reductions, ClipUp/Adam) on the same numbers, so the centres stay bit-identical
  (on CPU, where the kernels are deterministic) without being sent. Per step: P floats, whatever d
  (the per-member training metrics take one more all-gather, of 4 P floats).
* RGS and grad: with at least as many samples (antithetic: pairs) as ranks the samples are split,
  else the mini-batch is; one all-reduce of (gradient sum, member losses, finite-member flags) per step, d + 2N floats
  (batch split: N (d + 1)). The sum is taken in another order than in one process, so the centre
  agrees with the single-process run to float rounding, not bit for bit.
* The centre (and PGPE's sigma) is compared across ranks by a checksum of its bits every
  ``--sync-check-every`` steps and before every checkpoint; a difference stops every rank with a
  :class:`DistributedError`. Checkpoints, logs and prints are rank 0's; a checkpoint holds no
  rank-specific state, so ``--resume`` works with any number of ranks.
* Validation, the final evaluation and ``gls.certify`` shard the examples over the ranks (contiguous
  slices) and add up the counts.

A collective that fails (a rank died, or did not answer within ``--dist-timeout`` seconds) raises
:class:`DistributedError` naming the rank, the step and the timeout.
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from gls.smoothing import PGPE, RGS, PopulationLoss

RECORD_KEYS = ("natural_acc", "certified_acc", "natural_loss", "robust_loss")


class DistributedError(RuntimeError):
    """A collective failed or the ranks' centres diverged; the message says which rank and step."""


@dataclass
class World:
    """This process's place in the job: rank, size, the device collectives use, and what was sent.

    `sent` counts, per kind of collective, the payload bytes this rank contributed (the tensor it
    handed to the collective); `calls` counts the collectives.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout_s: float = 600.0
    sent: dict = field(default_factory=dict)
    calls: dict = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def main_only(self, fn):
        """`fn` on rank 0, a function doing nothing on the other ranks (files and prints are rank 0's)."""
        return fn if self.is_main else (lambda *args, **kwargs: None)

    def span(self, n: int) -> tuple[int, int]:
        """This rank's contiguous slice [lo, hi) of n items (sizes differ by at most one)."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def shard(self, split):
        """This rank's contiguous part of `split` (a dataclass of images x and labels y, such as
        gls.app.data.Split; the whole split in one process)."""
        lo, hi = self.span(len(split))
        return split if not self.active else dataclasses.replace(split, x=split.x[lo:hi], y=split.y[lo:hi])

    def _run(self, kind: str, what: str, payload: torch.Tensor | None, fn):
        self.calls[kind] = self.calls.get(kind, 0) + 1
        if payload is not None:
            self.sent[kind] = self.sent.get(kind, 0) + payload.numel() * payload.element_size()
        try:
            return fn()
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DistributedError(
                f"rank {self.rank} of {self.size}: {what} failed: another rank stopped or did not answer within "
                f"{self.timeout_s:g} s (--dist-timeout) [{type(e).__name__}: {first}]") from e

    def all_gather(self, local: torch.Tensor, kind: str, what: str) -> list[torch.Tensor]:
        """Every rank's `local` (same shape on all ranks), in rank order."""
        t = local.contiguous().to(self.device)
        out = [torch.empty_like(t) for _ in range(self.size)]
        self._run(kind, what, t, lambda: dist.all_gather(out, t))
        return [o.to(local.device) for o in out]

    def all_reduce(self, t: torch.Tensor, kind: str, what: str) -> torch.Tensor:
        """The sum over ranks of `t` (a new tensor on t's device)."""
        buf = t.contiguous().to(self.device).clone()
        self._run(kind, what, buf, lambda: dist.all_reduce(buf))
        return buf.to(t.device)

    def broadcast_object(self, obj, what: str):
        """Rank 0's `obj` on every rank."""
        box = [obj]
        self._run("broadcast_object", what, None, lambda: dist.broadcast_object_list(box, src=0))
        return box[0]

    def gather_objects(self, obj, what: str) -> list:
        out = [None] * self.size
        self._run("gather_objects", what, None, lambda: dist.all_gather_object(out, obj))
        return out

    def gather_pairs(self, local: torch.Tensor, n: int, kind: str, what: str) -> torch.Tensor:
        """(k, 2n) from each rank's (k, 2c) rows [its c plus members, its c minus members] of a pair-split
        population of n pairs: every rank's plus halves in rank order, then the minus halves."""
        k, width = local.shape
        c, cmax = width // 2, -(-n // self.size)
        padded = local.new_full((k, 2, cmax), math.nan)
        padded[:, :, :c] = local.view(k, 2, c)
        parts = self.all_gather(padded, kind, what)
        sizes = [(r + 1) * n // self.size - r * n // self.size for r in range(self.size)]  # every rank's span
        return torch.cat([torch.cat([p[:, h, :s] for p, s in zip(parts, sizes)], dim=1) for h in (0, 1)], dim=1)

    def check_same(self, tensors: list[torch.Tensor], step: int) -> None:
        """Stop every rank with DistributedError if the bits of `tensors` differ between ranks."""
        sums = torch.stack([_checksum(t) for t in tensors]).reshape(-1)
        got = self.all_gather(sums, "checksum", f"the centre checksum at step {step}")
        bad = [r for r, s in enumerate(got) if not torch.equal(s, got[0])]
        if bad:
            raise DistributedError(
                f"the centre on rank(s) {', '.join(map(str, bad))} differs from rank 0's at step {step} "
                f"(checksum of its bits): the ranks must run the same code, config, torch version and device "
                f"type, with deterministic kernels")

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def _checksum(t: torch.Tensor) -> torch.Tensor:
    """Two int64 sums of t's bits (plain and position-weighted; both wrap identically on every rank)."""
    flat = t.detach().contiguous().reshape(-1)
    bits = flat.view({8: torch.int64, 4: torch.int32, 2: torch.int16}[flat.element_size()]).to(torch.int64)
    pos = torch.arange(1, bits.numel() + 1, dtype=torch.int64, device=bits.device)
    return torch.stack([bits.sum(), (bits * pos).sum()])


def init(device: str = "cpu", timeout_s: float = 600.0) -> World:
    """The World from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT);
    a one-process World, touching nothing, without it. Joins the process group (gloo, or NCCL for CUDA)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    dev = torch.device(device)
    if size <= 1:
        return World(device=dev, timeout_s=timeout_s)
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise DistributedError(f"WORLD_SIZE={size} but {key} is not set: launch with torchrun")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":  # one GPU per rank on each machine
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, rank=rank, world_size=size, timeout=timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        raise DistributedError(f"rank {rank} of {size}: cannot join the process group ({backend} at "
                               f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}): {e}") from e
    return World(rank=rank, size=size, local_rank=local, device=dev, timeout_s=timeout_s)


def device_of(world: World, device: str) -> str:
    """The device a rank trains on: cuda:<local rank> for a CUDA run, else `device`."""
    return str(world.device) if world.active and torch.device(device).type == "cuda" else device


class DistributedPGPE(PGPE):
    """PGPE whose population is split over the ranks by antithetic pairs (see the module docstring)."""

    def __init__(self, theta: torch.Tensor, *, world: World, **kwargs):
        super().__init__(theta, **kwargs)
        n = self.population // 2
        if n < world.size:
            raise ValueError(f"a population of {self.population} has {n} antithetic pairs, fewer than the "
                             f"{world.size} ranks: use at least --population {2 * world.size}")
        self.world = world

    def losses(self, loss_fn: PopulationLoss, step: int) -> torch.Tensor:
        lo, hi = self.world.span(self.population // 2)
        local = self.pair_losses(loss_fn, step, lo, hi - lo)
        return self.world.gather_pairs(local[None], self.population // 2, "fitness",
                                       f"the fitness all-gather at step {step}")[0]

    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x, y

    def gather_record(self, record: dict, step: int) -> dict:
        """The per-member metrics of the whole population, in the order of one unchunked pass."""
        lo, hi = self.world.span(self.population // 2)
        pairs = hi - lo
        chunk = self.pair_chunk or pairs
        local = torch.stack([record[k].to(self.theta.dtype) for k in RECORD_KEYS])
        plus, minus = [], []
        for start in range(0, pairs, chunk):  # the record holds chunk after chunk, each plus rows then minus rows
            c = min(chunk, pairs - start)
            plus.append(local[:, 2 * start:2 * start + c])
            minus.append(local[:, 2 * start + c:2 * (start + c)])
        local = torch.cat(plus + minus, dim=1)
        full = self.world.gather_pairs(local, self.population // 2, "metrics", f"the metrics all-gather at step {step}")
        return dict(zip(RECORD_KEYS, full))

    def synced_state(self) -> list[torch.Tensor]:
        return [self.theta, self.sigma]


class DistributedRGS(RGS):
    """RGS / plain gradients with the samples (antithetic: the pairs) split over the ranks when there are
    at least as many as ranks, else the mini-batch: call local_batch on each step's batch first."""

    def __init__(self, theta: torch.Tensor, *, world: World, **kwargs):
        super().__init__(theta, **kwargs)
        self.world = world
        self.split_batch = (self.samples // 2 if self.antithetic else self.samples) < world.size  # pairs stay together
        self._batch_weight = 1.0

    def local_batch(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of the mini-batch (all of it when the samples are split)."""
        if not self.split_batch:
            return x, y
        lo, hi = self.world.span(len(y))
        self._batch_weight = (hi - lo) / len(y)
        return x[lo:hi], y[lo:hi]

    def _rows(self) -> torch.Tensor:
        """Indices of this rank's members among the N population rows (samples split)."""
        if self.antithetic:
            n = self.samples // 2
            lo, hi = self.world.span(n)
            return torch.cat([torch.arange(lo, hi), torch.arange(n + lo, n + hi)])
        lo, hi = self.world.span(self.samples)
        return torch.arange(lo, hi)

    def gradient(self, loss_fn: PopulationLoss, step: int):
        d, N = self.theta.numel(), self.samples
        what = f"the gradient all-reduce at step {step}"
        if self.split_batch:  # every member on every rank, a share of the batch: weight by that share
            w = self._batch_weight
            if w > 0:
                losses, grad = self.member_gradients(loss_fn, self.population_of(step))
                losses, grad = w * losses, w * grad
            else:  # fewer rows in this batch than ranks
                losses, grad = self.theta.new_zeros(N), self.theta.new_zeros(N, d)
            total = self.world.all_reduce(torch.cat([losses, grad.reshape(-1)]), "gradient", what)
            losses, grad = total[:N], total[N:].view(N, d)
            g, ok = self.finite_mean(losses, grad)
            return g, losses, ok
        rows = self._rows()
        n_local = rows.numel() // 2 if self.antithetic else rows.numel()
        lo = self.world.span(N // 2 if self.antithetic else N)[0]
        pop = self.population_of(step, first=lo, count=n_local)
        losses, grad = self.member_gradients(loss_fn, pop)
        ok = torch.isfinite(losses) & torch.isfinite(grad).all(dim=1)
        buf = self.theta.new_zeros(d + 2 * N)
        buf[:d] = grad[ok].sum(0)
        buf[d + rows.to(buf.device)] = losses
        buf[d + N + rows.to(buf.device)] = ok.to(buf.dtype)
        total = self.world.all_reduce(buf, "gradient", what)
        losses, ok = total[d:d + N], total[d + N:] > 0
        count = int(ok.sum())
        g = total[:d] / count if count else torch.zeros_like(total[:d])
        return g, losses, ok

    def gather_record(self, record: dict, step: int) -> dict:
        """The per-member metrics over the whole batch and population (batch split: share-weighted sums)."""
        N = self.samples
        what = f"the metrics exchange at step {step}"
        if self.split_batch:
            local = torch.stack([record[k].to(self.theta.dtype) * self._batch_weight if k in record
                                 else self.theta.new_zeros(N) for k in RECORD_KEYS])
            return dict(zip(RECORD_KEYS, self.world.all_reduce(local, "metrics", what)))
        rows = self._rows().to(self.theta.device)
        local = self.theta.new_zeros(len(RECORD_KEYS), N)
        local[:, rows] = torch.stack([record[k].to(self.theta.dtype) for k in RECORD_KEYS])
        return dict(zip(RECORD_KEYS, self.world.all_reduce(local, "metrics", what)))

    def synced_state(self) -> list[torch.Tensor]:
        return [self.theta.detach()]


def validate_counts(world: World, counts: list[int]) -> list[int]:
    """Integer counts summed over the ranks (exact)."""
    if not world.active:
        return counts
    return [int(v) for v in world.all_reduce(torch.tensor(counts, dtype=torch.int64), "eval", "the validation counts")]


def evaluate(world: World, evaluate_local, model, split, eps: float, **kwargs) -> dict:
    """`evaluate_local` (gls.app.certify.evaluate, passed in so this module does not import its caller) on
    this rank's shard of `split`, the counts summed over the ranks and the per-method seconds the slowest
    rank's. PGD's random starts differ from one process's (each rank's generator starts at the seed), so
    the PGD figure may differ by a few samples."""
    if not world.active:
        return evaluate_local(model, split, eps, **kwargs)
    t0 = time.perf_counter()
    part = evaluate_local(model, world.shard(split), eps, **kwargs)
    parts = world.gather_objects(part, "the evaluation gather")
    n = sum(p["n"] for p in parts)
    counts = {k: sum(round(p["accuracy"][k] * p["n"]) for p in parts) for k in part["accuracy"]}
    result = dict(part)
    result.update(n=n, accuracy={k: v / max(n, 1) for k, v in counts.items()},
                  seconds={k: max(p["seconds"][k] for p in parts) for k in part["seconds"]},
                  ranks=world.size, wall_s=time.perf_counter() - t0)
    return result
