"""gls.memory's plan against the measured peak RSS rise of one bound pass, with and without backward.

``python -m bench.memory_plan [--nets mlp,cnn3] [--methods ...] [--batches 1,8,32] [--skip-above 8GB]``
measures every cell of {net} x {method} x {bounds only, with backward} x {B} in a fresh subprocess (peaks
of different cells never mix): gls.app.models.build(net, (1, 28, 28), MNIST statistics, init="ibp"),
the first B real MNIST test images (bench/trained.py), eps 0.1, the margin lower bound of every sample;
"backward" runs it with the weights requiring grad and back-propagates the robust loss (gls.robust_loss). The child
keeps freed memory in the process as gls.train and gls.certify do (gls.app.heap), warms up with the same
call on one image at eps 0 (libraries and kernels loaded), gives the free heap back (malloc_trim: else
the pass reuses pages the data set's loading freed and its rise hides), records its resident set, resets the peak
(/proc/self/clear_refs) and reports the peak (VmHWM) minus that: what gets a run killed.

Measurements go to bench/results/memory_plan_<cpu>.json (kept across runs: a cell is measured once);
the report (.md) recomputes the plan column from the stored unstable counts with the current gls.memory.
A cell whose plan exceeds --skip-above (or 60 % of the memory available now) is not run, and the report
says so.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from gls import memory
from gls.app import models
from gls.net import Network

from bench.harness import device_name

RESULTS = Path(__file__).parent / "results"
EPS = 0.1
NETS = ("mlp", "cnn3", "cnn5", "cnn7")
METHODS = ("ibp", "crown-ibp", "hbox", "deeppoly")
BATCHES = (1, 8, 32)

_CHILD = r"""
import ctypes, gc, json, os, sys, time
import torch
a = json.loads(sys.argv[1])
torch.set_num_threads(a.get("threads", 1))
from gls.app import heap, models
heap.keep_freed_memory()
from gls import budget, memory, robust_loss
from gls.bounds import compute_bounds
from bench.trained import mnist_test

torch.manual_seed(0)
model = models.build(a["net"], (1, 28, 28), (0.1307,), (0.3081,), init="ibp").eval()
x, y = mnist_test(a["B"])
grad = a["grad"]
model.requires_grad_(grad)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def hwm():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

limit = budget.default_budget(torch.device("cpu")) if a.get("budget") is None else a["budget"]

def run(x, y, eps):
    with torch.set_grad_enabled(grad):
        lower = compute_bounds(model, x, eps, method=a["method"], labels=y, budget=limit).lower
        if grad:
            robust_loss(lower).backward()
            model.zero_grad(set_to_none=True)
    del lower

counts = memory.unstable_counts(model, x, a["eps"])
run(x[:1], y[:1], 0.0)  # warm-up: one image, nothing unstable
gc.collect()
ctypes.CDLL(None).malloc_trim(0)  # give back the free heap (the data set's copies): the pass must not hide in it
before = rss()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
t = time.perf_counter()
run(x, y, a["eps"])
secs = time.perf_counter() - t
print(json.dumps({"measured": max(hwm() - before, 0), "base": before, "unstable": counts, "seconds": secs,
                  "budget": limit}))
"""


def measure(net: str, method: str, grad: bool, B: int, *, budget: int | None = None, threads: int = 1,
            cap: int | None = None) -> dict:
    """One cell in a fresh process; budget: compute_bounds's (None: gls.budget.default_budget in the child);
    cap: the child's address space (prlimit --as), so a mistake cannot take the machine's memory."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    root = Path(__file__).resolve().parent.parent
    case = dict(net=net, method=method, grad=grad, B=B, eps=EPS, budget=budget, threads=threads)
    limit = ["prlimit", f"--as={cap}", "--"] if cap else []
    out = subprocess.run([*limit, "nice", sys.executable, "-c", _CHILD, json.dumps(case)], capture_output=True,
                         text=True, cwd=root, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def shape_of(net: str) -> memory.NetShape:
    model = models.build(net, (1, 28, 28), (0.1307,), (0.3081,), init="ibp")
    return memory.NetShape.of(Network.from_module(model), (1, 28, 28))


def plan(net: str, method: str, grad: bool, B: int, unstable=None, budget=None) -> int:
    return memory.pass_bytes(shape_of(net), method, 1, B, grad=grad, unstable=unstable, budget=budget)


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")[:40]


def key(net, method, grad, B) -> str:
    return f"{net}/{method}/{'backward' if grad else 'bounds'}/{B}"


SMALL = 32e6  # rises below this are mostly the allocator's (pages first touched, arenas), not the pass's tensors


def report(results: dict, skipped: dict) -> str:
    """The markdown table over the whole grid: plan / measured per cell, worst ratios."""
    lines = ["| net | method | pass | B | unstable per ReLU (max over the batch) | plan | measured | plan / measured |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    ratios = []
    grid = [key(n, m, g, B) for n in NETS for m in METHODS for g in (False, True) for B in BATCHES]
    for k in grid:
        net, method, mode, B = k.split("/")
        if k in results:
            r = results[k]
            est = plan(net, method, mode == "backward", int(B), r["unstable"], r.get("budget"))
            ratio = est / max(r["measured"], 1)
            ratios.append((ratio, k, r["measured"]))
            lines.append(f"| {net} | {method} | {mode} | {B} | {', '.join(map(str, r['unstable']))} | {_mb(est)} | "
                         f"{_mb(r['measured'])} | {ratio:.2f} |")
        else:
            est = skipped[k]["plan"] if k in skipped else plan(net, method, mode == "backward", int(B))
            why = skipped[k]["why"] if k in skipped else "not measured yet (time)"
            lines.append(f"| {net} | {method} | {mode} | {B} | (all) | {_mb(est)} | not run: {why} | |")
    big = [t for t in ratios if t[2] >= SMALL]
    for name, part in (("all measured cells", ratios), (f"cells with a rise of {SMALL / 1e6:.0f} MB or more", big)):
        if part:
            lo, hi = min(part), max(part)
            inside = sum(0.7 <= r <= 1.5 for r, _, _ in part)
            lines += ["", f"{name} ({len(part)}): plan / measured from {lo[0]:.2f} ({lo[1]}) to {hi[0]:.2f} ({hi[1]}); "
                          f"{inside} of {len(part)} within 0.7-1.5x."]
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nets", default=",".join(NETS))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batches", default=",".join(map(str, BATCHES)))
    p.add_argument("--modes", default="bounds,backward")
    p.add_argument("--skip-above", default="8GB", help="do not run cells whose plan exceeds this")
    p.add_argument("--report-only", action="store_true", help="write the report from the stored measurements")
    args = p.parse_args(argv)
    stem = RESULTS / f"memory_plan_{safe_name(device_name())}"
    store = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
    results, skipped = store.get("results", {}), store.get("skipped", {})
    limit = memory.parse_size(args.skip_above)
    if not args.report_only:
        for net in args.nets.split(","):
            for method in args.methods.split(","):
                for mode in args.modes.split(","):
                    for B in map(int, args.batches.split(",")):
                        k, grad = key(net, method, mode == "backward", B), mode == "backward"
                        if k in results:
                            continue
                        cpu = torch.device("cpu")
                        est = plan(net, method, grad, B, budget=memory.default_budget(cpu))  # every ReLU unstable
                        cap = min(limit, int(0.6 * memory.available_bytes(cpu)))
                        if est > cap:
                            skipped[k] = {"plan": est, "why": f"its plan (every ReLU unstable, the default budget) is over "
                                                                   f"{_mb(cap)} (--skip-above, or 60 % of the memory available then)"}
                            print(f"{k}: skipped, plan {_mb(est)}", flush=True)
                        else:
                            t = time.time()
                            results[k] = measure(net, method, grad, B)
                            skipped.pop(k, None)
                            print(f"{k}: measured {_mb(results[k]['measured'])} in {time.time() - t:.0f} s", flush=True)
                        stem.with_suffix(".json").write_text(json.dumps({"results": results, "skipped": skipped},
                                                                        indent=1))
    text = report(results, skipped)
    stem.with_suffix(".md").write_text(_HEADER + f"Machine: {device_name()}, {os.cpu_count()} CPUs; memory figures do not depend on the load.\n\n"
                                       + text + "\n")
    print(text)
    return 0


_HEADER = """# gls.memory's plan against the measured peak RSS rise

Written by `python -m bench.memory_plan` (see its docstring for the method). Networks
`gls.app.models.build(net, (1, 28, 28), ..., init="ibp")`, the first B real MNIST test images, eps 0.1,
P = 1, the margin lower bound; "bounds" under `torch.no_grad`, "backward" with the weights requiring
grad and the robust loss back-propagated. One thread per cell, one cell at a time, each in a
fresh process. "measured" is the peak resident set minus the resident set before the pass; "plan" is
`gls.memory.pass_bytes` from the unstable counts of an IBP pass on the same batch.

The planner's few constants (gls/memory.py) were fitted to measurements: STEP_ALIVE, GRAD_KEEP,
GRAD_BLOCKS, DENSE_KEEP and WEIGHT_COPIES to the cells of the Xeon's report
(memory_plan_Intel_R_Xeon_R_Processor.md, an earlier version, before the budgets), RETAINED to
bench.memory_budget's CNN7 cases, and SINGLE_COPIES, IBP_ALIVE and IBP_GRAD to this table on the AVX2
EPYC (IBP_GRAD the larger of the values that fit it equally, so that tests/memory_probe.py's widest step,
CNN7 RGS CROWN-IBP at 4 members x 64 samples, is not planned below its measured peak); on another
machine or version the table tests them. tests/test_memory.py checks two training steps
(tests/memory_probe.py) and the CNN7 DeepPoly with-backward figures. Rises of a few MB are mostly the
allocator's (pages first touched, thread arenas), hence the two summary lines.
Cells whose plan with every ReLU unstable (at the default budget) exceeds --skip-above or 60 % of the
memory available were not run, nor those the session had no time for; the table says which.

"""


if __name__ == "__main__":
    sys.exit(main())
