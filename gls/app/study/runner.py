"""Run a study's jobs as subprocesses, at most `workers` at a time, in dependency order, resumably.

Every job is a ``python -m ...`` subprocess with its own log file, so runs are isolated (a diverged or
crashed run fails alone), each sets its own torch thread count and RNG state exactly as on the command
line, and killing the study leaves each run in the state ``gls.train --resume`` continues from.

A job decides its own command when it starts (``argv()``), which is how resuming works: a training job
whose run directory holds ``summary.json`` is done; one that holds ``last.pt`` but no summary (killed
mid-run, or during its final evaluation) is continued with ``gls.train --resume``; otherwise it starts
fresh. An evaluation job is done when its result file exists for the same settings.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import gls


@dataclass
class Job:
    name: str
    argv: Callable[[], list[str]]          # module and arguments after ``python -m``
    log: Path
    is_done: Callable[[], bool]
    deps: list[str] = field(default_factory=list)
    describe: Callable[[], str] = lambda: ""  # a short result for the progress line


def _env() -> dict:
    """The children import the same gls as this process, and use one thread each by default."""
    env = dict(os.environ)
    root = str(Path(gls.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def train_state(run_dir: Path) -> str:
    """'finished' | 'diverged' (summary.json written), 'partial' (a checkpoint, no summary) or 'new'."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        return json.loads(summary.read_text()).get("status", "finished")
    return "partial" if (run_dir / "last.pt").is_file() else "new"


def train_argv(run_dir: Path, config_file: Path) -> list[str]:
    """gls.train's command for a run directory: --resume when it holds a checkpoint, else a fresh run."""
    if train_state(run_dir) == "partial":
        return ["gls.train", "--resume", str(run_dir), "--progress", "false"]
    return ["gls.train", "--config", str(config_file), "--out", str(run_dir)]


def run(jobs: list[Job], workers: int = 1, out=None) -> dict[str, str]:
    """Run the jobs; returns {name: 'skipped' | 'done' | 'failed' | 'blocked'}. One progress line per job
    when it is skipped, starts (with resume/fresh) and ends. Ctrl-C stops the children (they keep their
    last checkpoints) and re-raises."""
    out = sys.stdout if out is None else out
    by_name = {j.name: j for j in jobs}
    status: dict[str, str] = {}
    total = len(jobs)
    for j in jobs:
        if j.is_done():
            status[j.name] = "skipped"
            print(f"[{len(status):>2}/{total}] {j.name}: already done, skipped  {j.describe()}".rstrip(), file=out, flush=True)
    running: dict[str, tuple[subprocess.Popen, float, object]] = {}
    env = _env()
    try:
        while len(status) < total:
            for j in jobs:
                if j.name in status or j.name in running or len(running) >= max(workers, 1):
                    continue
                dep_states = [status.get(d) for d in j.deps if d in by_name]
                if any(s in ("failed", "blocked") for s in dep_states):
                    status[j.name] = "blocked"
                    print(f"[{len(status):>2}/{total}] {j.name}: not run (a job it needs failed)", file=out, flush=True)
                    continue
                if any(s is None for s in dep_states):
                    continue
                argv = j.argv()
                j.log.parent.mkdir(parents=True, exist_ok=True)
                log = open(j.log, "a")
                log.write(f"$ python -m {' '.join(argv)}\n")
                log.flush()
                proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
                running[j.name] = (proc, time.perf_counter(), log)
                how = "resuming" if "--resume" in argv else "starting"
                print(f"      {j.name}: {how} (log {j.log})", file=out, flush=True)
            finished = [n for n, (p, _, _) in running.items() if p.poll() is not None]
            for name in finished:
                proc, t0, log = running.pop(name)
                log.close()
                ok = proc.returncode == 0 and by_name[name].is_done()
                status[name] = "done" if ok else "failed"
                what = by_name[name].describe() if ok else f"exit {proc.returncode}, see {by_name[name].log}"
                print(f"[{len(status):>2}/{total}] {name}: {status[name]} in {time.perf_counter() - t0:.0f} s  {what}".rstrip(),
                      file=out, flush=True)
            if not finished:
                time.sleep(0.2)
    except BaseException:
        for proc, _, log in running.values():
            proc.terminate()
        for proc, _, log in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        raise
    return status
