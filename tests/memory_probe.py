"""Measured peak memory of one training or certification step, for checking gls.memory's estimates.

tracemalloc does not see tensor storage, so each measurement runs in a fresh subprocess: after a warm-up
step at 1 member x 1 sample (the libraries and kernels are then loaded), the process's peak resident set
is reset (``/proc/self/clear_refs``; importing torch can peak higher than a small step), and the peak
after the step (VmHWM) minus the resident set before it is the step's peak. The estimate uses the
unstable counts of the step's own batch (gls.memory.unstable_counts). bench/memory_plan.py does the
same for bound passes over the networks, methods and batch sizes of the planner's report.

``python tests/memory_probe.py`` prints the estimate next to the measurement for a grid of small sizes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
from gls import memory
from gls.app import models
from gls.net import Network
from gls.objective import population_loss
from gls.smoothing import PGPE, RGS
from gls.bounds import compute_bounds

a = json.loads(sys.argv[1])
torch.manual_seed(0)
model = models.build(a["net"], (1, 28, 28), (0.1307,), (0.3081,), width=a.get("width")).eval()
net = Network.from_module(model)
theta = net.layout.flatten(net.params()).detach()[0].clone()
shape = memory.NetShape.of(net, (1, 28, 28))

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def step(P, B):
    x, y = torch.rand(B, 1, 28, 28), torch.randint(0, 10, (B,))
    if a["kind"] == "cert":
        with torch.no_grad():
            compute_bounds(net, x, a["eps"], method=a["relaxation"], labels=y)
        return
    loss = population_loss(net, x, y, eps=a["eps"], relaxation=a["relaxation"], robust_weight=1.0,
                           sample_chunk=a.get("sample_chunk"))
    if a["method"] == "pgpe":
        opt = PGPE(theta, sigma=0.01, lr=0.01, population=P, seed=0, pair_chunk=a.get("member_chunk", P) // 2)
    else:
        opt = RGS(theta, sigma=0.01 if P > 1 else 0.0, samples=P, seed=0, member_chunk=a.get("member_chunk"))
    opt.step(loss, 0)

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

step(2 if a.get("method") == "pgpe" else 1, 1)
torch.manual_seed(1)
x_plan = torch.rand(a["B"], 1, 28, 28)
counts = memory.unstable_counts(model, x_plan, a["eps"])  # the batch step() draws next (same seed)
torch.manual_seed(1)
before = rss()
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM): imports may have peaked higher
    f.write("5")
step(a["P"], a["B"])
peak = hwm()
if a["kind"] == "cert":
    est = memory.cert_bytes(shape, a["relaxation"], a["B"], unstable=counts)
else:
    est = memory.step_bytes(shape, method=a["method"], relaxation=a["relaxation"], population=a["P"],
                            member_chunk=a.get("member_chunk") or a["P"], sample_chunk=a.get("sample_chunk") or a["B"],
                            unstable=counts)
print(json.dumps({"measured": max(peak - before, 0), "estimate": est}))
"""


def measure(**case) -> dict:
    """{"measured": bytes, "estimate": bytes} of one step described by `case` (kind train|cert, net,
    relaxation, eps, P, B; train: method, member_chunk, sample_chunk)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(case)], capture_output=True, text=True,
                         cwd=root, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


GRID = [
    dict(kind="train", method="rgs", net="mlp", relaxation="crown-ibp", eps=0.3, P=4, B=128),
    dict(kind="train", method="rgs", net="mlp", relaxation="deeppoly", eps=0.3, P=4, B=32),
    dict(kind="train", method="rgs", net="cnn3", relaxation="ibp", eps=0.3, P=4, B=64),
    dict(kind="train", method="rgs", net="cnn3", relaxation="crown-ibp", eps=0.3, P=4, B=64),
    dict(kind="train", method="rgs", net="cnn3", relaxation="deeppoly", eps=0.3, P=1, B=4),
    dict(kind="train", method="grad", net="cnn7", relaxation="crown-ibp", eps=0.3, P=1, B=8, width=16),
    dict(kind="train", method="rgs", net="cnn7", relaxation="crown-ibp", eps=0.3, P=4, B=16, width=16),
    dict(kind="train", method="rgs", net="cnn7", relaxation="crown-ibp", eps=0.3, P=4, B=16, width=16,
         member_chunk=1, sample_chunk=4),
    dict(kind="train", method="rgs", net="cnn7", relaxation="crown-ibp", eps=0.3, P=4, B=64),  # the widest
    dict(kind="train", method="pgpe", net="cnn3", relaxation="crown-ibp", eps=0.3, P=16, B=64),
    dict(kind="train", method="pgpe", net="cnn7", relaxation="crown-ibp", eps=0.3, P=8, B=32, width=16),
    dict(kind="cert", net="cnn3", relaxation="crown-ibp", eps=0.3, P=1, B=256),
    dict(kind="cert", net="cnn3", relaxation="deeppoly", eps=0.3, P=1, B=64),
    dict(kind="cert", net="cnn7", relaxation="crown-ibp", eps=0.3, P=1, B=64, width=16),
]


if __name__ == "__main__":
    print(f"{'case':<100} {'measured':>10} {'estimate':>10} {'ratio':>6}")
    for case in GRID:
        r = measure(**case)
        label = ",".join(f"{k}={v}" for k, v in case.items())
        print(f"{label:<100} {r['measured'] / 2**20:8.0f}MB {r['estimate'] / 2**20:8.0f}MB "
              f"{r['estimate'] / max(r['measured'], 1):6.2f}", flush=True)
