"""Peak RSS rise of DeepPoly on CNN7 with and without backward, at the default budget and a 1.5 GB one.

``python -m bench.memory_budget [--cases backward/1,backward/8,bounds/8] [--budgets default,1.5GB]``
measures each case in a fresh process with bench.memory_plan's child (gls.app.models.build("cnn7",
(1, 28, 28), MNIST statistics, init="ibp"), the first B real MNIST test images, eps 0.1, the margin lower
bound; "backward" with the weights requiring grad and the robust loss back-propagated), 2 threads, the
child's address space capped (prlimit --as, default 12 GB) so that a mistake cannot take the shared
machine's memory. "rise" is the peak resident set during the pass minus the resident set before it.
Beside each: gls.memory's plan for the same pass (pass_bytes with the child's unstable counts and
budget, recomputed with the current planner whenever the report is written) and the load average when
the case started. The targets (DeepPoly's back-substitutions
blocked within the budget, gls.budget): with backward <= 4 GB, bounds only <= 2 GB at the default
budget, and every case within a 1.5 GB budget.

Writes bench/results/memory_budget_<cpu>.json and .md (the cases measured in this run replace those stored).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from gls import memory

from bench.harness import device_name
from bench.memory_plan import RESULTS, measure, safe_name, shape_of

TARGETS = {"backward": 4e9, "bounds": 2e9}  # at the default budget
GRID_CASES, GRID_BUDGETS = ("backward/1", "backward/8", "bounds/8"), ("default", "1.5GB")


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_case(mode: str, B: int, budget: str, threads: int, cap: int) -> dict:
    limit = None if budget == "default" else memory.parse_size(budget)
    load = _load()
    t = time.time()
    r = measure("cnn7", "deeppoly", mode == "backward", B, budget=limit, threads=threads, cap=cap)
    return {**r, "load_before": load, "load_after": _load(), "wall_s": time.time() - t}


def _plan(mode: str, B: int, r: dict) -> int:
    """gls.memory's plan of a stored case, from its unstable counts and budget with the current planner."""
    return memory.pass_bytes(shape_of("cnn7"), "deeppoly", 1, B, grad=mode == "backward", unstable=r["unstable"],
                             budget=r["budget"])


def report(results: dict) -> str:
    lines = ["| pass | B | budget | peak RSS rise | target | plan | plan / rise | pass time | load (1/5/15 min) before |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, r in results.items():
        mode, B, budget = key.split("/")
        target = TARGETS[mode] if budget == "default" else r["budget"]
        ok = "met" if r["measured"] <= target else "**missed**"
        plan = _plan(mode, int(B), r)
        lines.append(f"| {mode} | {B} | {budget} ({r['budget'] / 1e9:.2f} GB) | {r['measured'] / 1e9:.2f} GB | "
                     f"<= {target / 1e9:.1f} GB: {ok} | {plan / 1e9:.2f} GB | {plan / max(r['measured'], 1):.2f} | "
                     f"{r['seconds']:.0f} s | {r['load_before']} |")
    missing = [f"{c}/{b}" for c in GRID_CASES for b in GRID_BUDGETS if f"{c}/{b}" not in results]
    if missing:
        lines += ["", f"Not measured yet: {', '.join(missing)}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(GRID_CASES))
    p.add_argument("--budgets", default=",".join(GRID_BUDGETS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cap", default="12GB", help="address-space limit of each child (prlimit --as)")
    p.add_argument("--report-only", action="store_true", help="write the report from the stored measurements")
    args = p.parse_args(argv)
    stem = RESULTS / f"memory_budget_{safe_name(device_name())}"
    store = json.loads(stem.with_suffix(".json").read_text()) if stem.with_suffix(".json").exists() else {}
    for case in [] if args.report_only else args.cases.split(","):
        mode, B = case.split("/")
        for budget in args.budgets.split(","):
            key = f"{mode}/{B}/{budget}"
            store[key] = run_case(mode, int(B), budget, args.threads, memory.parse_size(args.cap))
            print(key, json.dumps(store[key]), flush=True)
            stem.with_suffix(".json").write_text(json.dumps(store, indent=1))
    text = report(store)
    stem.with_suffix(".md").write_text(_HEADER + text + "\n")
    print(text)
    return 0


_HEADER = """# DeepPoly on CNN7 within a memory budget: peak RSS rise with and without backward

Written by `python -m bench.memory_budget` (see its docstring for the method). One MNIST test image
(B = 1) or the first eight (B = 8), eps 0.1, IBP initialisation, 2 threads, one case at a time, each
in a fresh process. "default" is gls.budget.default_budget in the child (70 % of the memory available
then); "1.5GB" is read as 1.5 GiB (1.61 GB, gls.memory.parse_size). Before the back-substitutions were
blocked (gls.budget), the B = 1 pass with backward rose by 15.9-16.7 GB (issue figure, same network
and image). The pass times include the recomputation of the checkpointed blocks; the load column is
the load average when each case started (on a shared machine other work may have run: it moves the
times, not the memory).

"""


if __name__ == "__main__":
    sys.exit(main())
