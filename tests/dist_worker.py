"""Rank processes for tests/test_distributed.py, forked from one forkserver that imports this module.

Importing it does once, in the forkserver, what every run does on its way: import gls.train, torch's
optimisers (their first construction imports torch._dynamo), matplotlib with its fonts (the first
curves.png) and load the MNIST arrays, so a rank forked from there skips them (over 20 s per rank on
a shared 2-core machine).
"""
from __future__ import annotations

import io
import os
import sys

import matplotlib
import torch
import tqdm  # noqa: F401  (imported by gls.app.train.train_epoch)

from gls import smoothing
from gls.app import certify, data, train

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

torch.optim.Adam([torch.zeros(1, requires_grad=True)])
plt.plot([0, 1], label="warm-up")
plt.legend()
plt.savefig(io.BytesIO(), format="png")
plt.close("all")
data.load("mnist", None)


def rank_main(rank: int, size: int, port: int, argv: list[str], log: str, tamper_rank: int | None = None,
              entry: str = "train") -> None:
    """One rank of a gloo job on 127.0.0.1: `python -m gls.<entry> argv` with stdout/stderr in `log`.

    `tamper_rank` (the divergence test): that rank nudges its centre after every update, as a rank
    with a different kernel or a flipped bit would, so the checksum must catch it.
    """
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    if tamper_rank == rank:
        center_step = smoothing.PGPE._center_step

        def nudged(self, g_mu):
            center_step(self, g_mu)
            self.theta[0] += 1e-6

        smoothing.PGPE._center_step = nudged
    code = {"train": train, "certify": certify}[entry].main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
