"""Distributed PGPE step: time on 1 and 2 processes (gloo, CPU) and the bytes each rank puts on the wire.

`2-ranks` (candidate): gls.distributed.DistributedPGPE.step on a 2-rank gloo group on 127.0.0.1 (this
pytest process is rank 0, a spawned process rank 1 steps in lock-step), plus the centre checksum
after every step (the worst case of --sync-check-every 1). `1-rank` (baseline): gls.smoothing.PGPE.step
in this process, no process group. The ratio bench.report prints is time(1 rank) / time(2 ranks).

Bytes per step, per rank: `wire_bytes_per_step` is measured: the growth of the process's `wchar`
(/proc/self/io: bytes passed to write/writev/send, which is what gloo's TCP pairs use; nothing else
writes during the timed steps) over the timed steps (after a warm-up step, which also carries gloo's
one-off connection traffic), divided by their number; rank 1's figure is stored too. `payload_bytes_per_step` is what gls handed to the collectives (fitness
all-gather + checksum); the difference is gloo's framing. `broadcast_bytes_per_step` = 4 P d, what a
scheme shipping every member's weights would send; `broadcast_ratio` = that / the measured bytes.
The fitness payload is P/2 floats per rank (2 ranks), so the wire bytes depend on P, not on d: the
grid holds the MLP (d = 89,610) at P = 16 and 64, CNN3 (d = 29,930) at P = 16 and CNN7 (d = 17.2 M)
at P = 4.

Sizes: quick (CPU): batch 8 (CNN7: 1), IBP, 3 rounds; full: batch 64 (CNN7: 8), 5 rounds. On a
machine with fewer free cores than ranks the 2-rank time measures contention, not scaling: the
report's load average says how busy it was.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket

import pytest
import torch

import gls
from bench import workload
from bench.harness import bench_size, measure, record
from gls import distributed
from gls.smoothing import PGPE

SIGMA, LR, TIMEOUT_S = 0.01, 0.01, 300
GRID = {  # (model, batch, populations)
    "quick": [("mlp", 8, (16, 64)), ("cnn3", 8, (16,)), ("cnn7", 1, (4,))],
    "full": [("mlp", 64, (16, 64)), ("cnn3", 64, (16,)), ("cnn7", 8, (4,))],
}
ROUNDS = {"quick": 3, "full": 5}
IMPLS = ("1-rank", "2-ranks")


def pytest_generate_tests(metafunc):
    if "impl" not in metafunc.fixturenames:
        return
    cases = [pytest.param(m, B, P, impl, id=f"{m}-B{B}-P{P}-{impl}")
             for m, B, pops in GRID[bench_size(metafunc.config)] for P in pops for impl in IMPLS]
    metafunc.parametrize(("model", "B", "P", "impl"), cases)


def _wchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def _setup(model: str, B: int, P: int, world: distributed.World | None):
    module, x, y, eps = workload.build(model, B, torch.device("cpu"))
    net = gls.Network.from_module(module)
    loss = workload.population_loss(net, x, y, eps, "ibp")
    theta0 = workload.flat_params(module)
    kwargs = dict(sigma=SIGMA, lr=LR, population=P, seed=0)
    opt = distributed.DistributedPGPE(theta0, world=world, **kwargs) if world else PGPE(theta0, **kwargs)
    return opt, loss, net.layout.numel


def _env(rank: int, port: int) -> dict:
    return dict(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                GLOO_SOCKET_IFNAME="lo")


def _peer(port: int, model: str, B: int, P: int, steps: int, threads: int, conn) -> None:
    """Rank 1: the same steps as rank 0, then its byte counts through `conn`."""
    os.environ.update(_env(1, port))
    torch.set_num_threads(threads)
    world = distributed.init("cpu", TIMEOUT_S)
    try:
        opt, loss, _ = _setup(model, B, P, world)
        with torch.no_grad():
            for t in range(steps):
                if t == 1:
                    w0 = _wchar()
                opt.step(loss, t)
                world.check_same(opt.synced_state(), t)
        conn.send({"wire": (_wchar() - w0) / (steps - 1)})
    finally:
        world.close()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_pgpe_step(benchmark, request, monkeypatch, model, B, P, impl):
    rounds = ROUNDS[bench_size(request.config)]
    steps = rounds + 1  # a warm-up step and the timed rounds
    counter = iter(range(10 ** 9))
    if impl == "1-rank":
        opt, loss, d = _setup(model, B, P, None)

        def step():
            opt.step(loss, next(counter))

        with torch.no_grad():
            measure(benchmark, step, torch.device("cpu"), rounds=rounds, warmup=1)
        record(benchmark, request, suite="distributed", role="baseline", items=P, unit="members", d=d, ranks=1)
        return

    port = _port()
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    peer = ctx.Process(target=_peer, args=(port, model, B, P, steps, torch.get_num_threads(), there), daemon=True)
    peer.start()
    for k, v in _env(0, port).items():
        monkeypatch.setenv(k, v)
    world = distributed.init("cpu", TIMEOUT_S)
    try:
        opt, loss, d = _setup(model, B, P, world)

        def step():
            t = next(counter)
            opt.step(loss, t)
            world.check_same(opt.synced_state(), t)

        with torch.no_grad():
            step()  # warm-up
            w0 = _wchar()
            measure(benchmark, step, torch.device("cpu"), rounds=rounds, warmup=0)
        wire = (_wchar() - w0) / rounds
        peer_wire = here.recv()["wire"]
    finally:
        world.close()
        peer.join(60)
    payload = sum(world.sent.values()) / steps
    broadcast = 4 * P * d
    record(benchmark, request, suite="distributed", role="candidate", items=P, unit="members", d=d, ranks=2,
           wire_bytes_per_step=wire, wire_bytes_per_step_rank1=peer_wire, payload_bytes_per_step=payload,
           fitness_bytes_per_step=world.sent["fitness"] / steps, checksum_bytes_per_step=world.sent["checksum"] / steps,
           broadcast_bytes_per_step=broadcast, broadcast_ratio=broadcast / wire,
           note="bytes per rank per step; wire = /proc/self/io wchar growth (gloo TCP writes)")
    assert world.calls == {"fitness": steps, "checksum": steps}
    # O(P), independent of d: the fitness slice (P/2 floats, padded), the checksum, gloo's framing
    assert payload == 4 * P // 2 + 2 * 8 * 2 and wire < payload + 2048
