"""``python -m gls.study paradox``: the paradox-of-certified-training grid, resumable and parallel.

    python -m gls.study paradox --preset cpu --workers 2          # the CPU budget (40 min measured on 2 cores)
    python -m gls.study paradox --preset paper --workers 4        # eps 0.3, 200 epochs, for a GPU
    python -m gls.study paradox --preset cpu --sweep              # the RGS/PGPE hyper-parameter sweep
    python -m gls.study paradox --preset cpu --estimate           # measured step times -> predicted time

Re-running the same command continues a study: finished runs are skipped, killed ones resume from
their last checkpoint (``gls.train --resume``), finished evaluations are kept. Outputs in ``--out``:
results.md, results.json, results.png (sweep: sweep.md, sweep.json), runs/<optimizer>-<relaxation>/
(ordinary gls.train run directories), evals/, configs/, logs/.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

from gls.app import checkpoint, data
from gls.app.study import paradox, report, runner
from gls.app.study import evaluate as study_eval
from gls.app.study.paradox import StudyError, cell_name


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise StudyError(message)


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m gls.study", description=__doc__.split("\n")[0])
    p.add_argument("study", choices=["paradox"], help="the study to run")
    p.add_argument("--preset", default="cpu", help=f"budget: {', '.join(paradox.PRESETS)} (default cpu)")
    p.add_argument("--out", default=None, help="study directory (default runs/study-paradox-<preset>)")
    p.add_argument("--workers", type=int, default=1, help="runs in parallel processes (default 1)")
    p.add_argument("--optimizers", default=None, help="comma separated subset of grad,rgs,pgpe (default all)")
    p.add_argument("--relaxations", default=None,
                   help="comma separated subset of ibp,hbox,crown-ibp,deeppoly (default all)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a preset entry, e.g. train.epochs=4 or pgpe.population=32 (repeatable)")
    p.add_argument("--sweep", action="store_true", help="run the RGS/PGPE hyper-parameter sweep instead of the grid")
    p.add_argument("--estimate", action="store_true", help="measure step times and print the predicted time only")
    return p


def _split(s):
    return None if s is None else [v for v in s.replace(",", " ").split() if v]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json(path, obj)


def _check_study_dir(out: Path, spec: dict) -> None:
    """A study directory belongs to one spec: re-running with other settings would mix runs."""
    f = out / "study.json"
    if f.is_file():
        saved = json.loads(f.read_text())
        mine = {k: spec[k] for k in ("train", "rgs", "pgpe", "eval")}
        if {k: saved.get(k) for k in mine} != mine:
            raise StudyError(f"{out} holds a study with other settings (see {f}); choose another --out")
    _write_json(f, spec)


def _eval_settings(spec) -> dict:
    ev = spec["eval"]
    return study_eval.settings(spec["train"]["eps"], ev["subset"], paradox.RELAXATIONS, ev["pgd_steps"],
                               ev["pgd_restarts"])


def _train_job(out: Path, name: str, cfg: dict, deps=()) -> runner.Job:
    run_dir, cfg_file = out / "runs" / name, out / "configs" / f"{name}.json"
    _write_json(cfg_file, cfg)

    def describe():
        s = json.loads((run_dir / "summary.json").read_text())
        return f"({s['status']}, {s['epochs_done']} epochs, training {s['train_time_s']:.0f} s)"

    return runner.Job(f"train {name}", lambda: runner.train_argv(run_dir, cfg_file), out / "logs" / f"train-{name}.log",
                      lambda: runner.train_state(run_dir) in ("finished", "diverged"), list(deps), describe)


def _eval_job(out: Path, name: str, spec: dict) -> runner.Job:
    run_dir, file = out / "runs" / name, out / "evals" / f"{name}.json"
    wanted, ev = _eval_settings(spec), spec["eval"]

    def done():
        last = run_dir / "last.pt"
        return study_eval.is_valid(file, wanted) and last.is_file() and file.stat().st_mtime >= last.stat().st_mtime

    def argv():
        a = ["gls.app.study.evaluate", str(run_dir), "--out", str(file), "--eps", repr(spec["train"]["eps"]),
             "--methods", ",".join(paradox.RELAXATIONS), "--pgd-steps", str(ev["pgd_steps"]),
             "--pgd-restarts", str(ev["pgd_restarts"]), "--batch-size", str(ev["batch_size"]),
             "--device", spec["train"]["device"]]
        return a + ([] if ev["subset"] is None else ["--subset", str(ev["subset"])])

    def describe():
        acc = json.loads(file.read_text())["accuracy"]
        return (f"natural {100 * acc['natural']:.1f} %  certified {100 * acc['best']:.1f} % "
                f"(deeppoly {100 * acc['deeppoly']:.1f} %)  PGD {100 * acc['pgd']:.1f} %")

    return runner.Job(f"evaluate {name}", argv, out / "logs" / f"evaluate-{name}.log", done, [f"train {name}"], describe)


def _n_train(spec) -> int:
    ds = data.load(spec["train"]["dataset"], spec["train"].get("data_dir"))
    return len(ds.train.subset(spec["train"]["train_subset"]))


def run_grid(spec: dict, out: Path, workers: int) -> int:
    n_train = _n_train(spec)
    runs = out / "runs"
    cells = [(o, r) for r in spec["relaxations"] for o in spec["optimizers"]]
    jobs, have = [], set()
    # costliest relaxations first, grad before the PGPE cell it warm-starts: the last jobs are short ones
    order = {"deeppoly": 0, "hbox": 1, "crown-ibp": 2, "ibp": 3}
    for o, r in sorted(cells, key=lambda c: (order[c[1]], paradox.OPTIMIZERS.index(c[0]))):
        if o == "pgpe" and ("grad", r) not in cells and cell_name("grad", r) not in have:  # the warm start
            jobs.append(_train_job(out, cell_name("grad", r), paradox.cell_config(spec, "grad", r, runs, n_train)))
            have.add(cell_name("grad", r))
        deps = [f"train {cell_name('grad', r)}"] if o == "pgpe" else []
        jobs.append(_train_job(out, cell_name(o, r), paradox.cell_config(spec, o, r, runs, n_train), deps))
        jobs.append(_eval_job(out, cell_name(o, r), spec))
    status = runner.run(jobs, workers)
    results = {"study": "paradox", "spec": spec, "n_train": n_train, "pgpe_schedule": dict(zip(("epochs", "images"), paradox.pgpe_schedule(spec, n_train))),
               "budget_rule": paradox.BUDGET_RULE, "eval_methods": list(paradox.RELAXATIONS),
               "n_test": spec["eval"]["subset"], "published_grad": paradox.PUBLISHED_GRAD, "published_setting": paradox.PUBLISHED_SETTING,
               "bound_evaluations": {cell_name(o, r): paradox.bound_evaluations(spec, o, n_train) for o, r in cells},
               "cells": {}, "job_status": status}
    for o, r in cells:
        c = report.cell_result(runs / cell_name(o, r), out / "evals" / f"{cell_name(o, r)}.json")
        if c is not None:
            results["cells"][cell_name(o, r)] = dict(c, optimizer=o, relaxation=r)
            results["n_test"] = c["n_test"]
    results["verdict"] = report.verdict(results["cells"])
    report.write(results, out)
    print(f"results: {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}")
    failed = [n for n, s in status.items() if s in ("failed", "blocked")]
    if failed:
        print(f"gls.study: {len(failed)} job(s) did not finish: {', '.join(failed)}; re-run the same command to retry",
              file=sys.stderr)
        return 1
    return 0


def run_sweep(spec: dict, out: Path, workers: int) -> int:
    sw, runs = spec["sweep"], out / "runs"
    relax, n_train = sw["relaxation"], _n_train(spec)
    grad = cell_name("grad", relax)
    jobs = [_train_job(out, grad, paradox.cell_config(spec, "grad", relax, runs, n_train))]
    rows = []
    half = max(1, -(-sw["epochs"] // 2))
    for method in ("rgs", "pgpe"):
        for change in [{}] + list(sw[method]):
            label = ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in change.items()) or "(preset)"
            name = f"{method}-{relax}-" + ("preset" if not change else "-".join(f"{k}{v}" for k, v in change.items()))
            if method == "rgs":
                s = dict(spec, rgs=dict(spec["rgs"], **change))
                cfg = paradox.cell_config(s, "rgs", relax, runs, n_train, epochs=sw["epochs"])
                cfg.update(eps_start_epoch=0, eps_end_epoch=half, lr_milestones=[])
                deps = []
            else:
                s = dict(spec, pgpe=dict(spec["pgpe"], **change))
                cfg = paradox.cell_config(s, "pgpe", relax, runs, n_train)
                deps = [f"train {grad}"]
            job = _train_job(out / "sweep", name, cfg, deps)
            job.name = f"train sweep/{name}"
            jobs.append(job)
            rows.append({"method": method, "change": label, "run_dir": out / "sweep" / "runs" / name})
    status = runner.run(jobs, workers)
    table = [{"method": "grad (warm start)", "change": "-", "run_dir": runs / grad}] + rows
    for row in table:
        metrics = Path(row["run_dir"]) / "metrics.jsonl"
        last = json.loads(metrics.read_text().splitlines()[-1]) if metrics.is_file() and metrics.read_text().strip() else {}
        summary = Path(row["run_dir"]) / "summary.json"
        row.update(val_certified_acc=last.get("val_certified_acc"), val_natural_acc=last.get("val_natural_acc"),
                   train_time_s=json.loads(summary.read_text())["train_time_s"] if summary.is_file() else None,
                   run_dir=str(row["run_dir"]))
    spec = dict(spec, pgpe_schedule=dict(zip(("epochs", "images"), paradox.pgpe_schedule(spec, n_train))))
    _write_json(out / "sweep.json", {"spec": spec, "rows": table, "job_status": status})
    checkpoint.write_text(out / "sweep.md", report.sweep_markdown(table, spec))
    print(f"sweep: {out / 'sweep.md'}, {out / 'sweep.json'}")
    return 1 if any(s in ("failed", "blocked") for s in status.values()) else 0


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Entry point; SIGTERM stops the study like Ctrl-C (the runs stop too, keeping their checkpoints)."""
    previous = signal.signal(signal.SIGTERM, _stop) if threading.current_thread() is threading.main_thread() else None
    try:
        return _main(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _main(argv) -> int:
    try:
        args = parser().parse_args(sys.argv[1:] if argv is None else argv)
        if args.workers < 1:
            raise StudyError(f"--workers must be >= 1, got {args.workers}")
        spec = paradox.resolve(args.preset, args.set, _split(args.optimizers), _split(args.relaxations))
        out = Path(args.out or f"runs/study-paradox-{args.preset}")
        if args.estimate:
            from gls.app.study import estimate

            return estimate.main(spec, args.workers)
        _check_study_dir(out, spec)
        return run_sweep(spec, out, args.workers) if args.sweep else run_grid(spec, out, args.workers)
    except (StudyError, data.DataError) as e:
        print(f"gls.study: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gls.study: interrupted; re-run the same command to continue (finished runs are kept)", file=sys.stderr)
        return 130
