"""python -m gls.study: the paradox grid's budget rule, verdict, CLI errors, and a miniature study end to end
(2 optimizers x 2 relaxations, 64 training images) including an interrupted run that resumes."""
import json

import pytest
import torch

import gls.app.train as train
from gls.app import checkpoint
from gls.app.study import paradox, report
from gls.app.study.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")

MINI = ["--optimizers", "grad,pgpe", "--relaxations", "ibp,deeppoly", "--workers", "2",
        "--set", "train.train_subset=64", "--set", "train.val_subset=32", "--set", "train.batch_size=32",
        "--set", "train.epochs=2", "--set", "train.eps_end_epoch=1", "--set", "train.lr_milestones=[]",
        "--set", "eval.subset=32", "--set", "eval.pgd_steps=2", "--set", "pgpe.population=4",
        "--set", "rgs.population=3", "--set", "pgpe.lr=0.01"]


def test_budget_rule_gives_pgpe_the_rgs_cells_bound_evaluations():
    spec = paradox.resolve("cpu", ["train.epochs=8", "rgs.population=4", "pgpe.population=6"])
    n = 1000
    assert paradox.pgpe_schedule(spec, n) == (4, 1000)  # 8 * 1000 * 3 / 6 = 4000 images
    assert paradox.pgpe_schedule(spec, 3000) == (4, 3000)
    assert paradox.pgpe_schedule(paradox.resolve("cpu", ["train.epochs=8", "rgs.population=4"]), 10000) == (1, 7500)
    assert paradox.bound_evaluations(spec, "grad", n) == 8 * n
    assert paradox.bound_evaluations(spec, "rgs", n) == 8 * n * 4
    assert paradox.bound_evaluations(spec, "pgpe", n) == 8 * n + 4 * n * 6 == paradox.bound_evaluations(spec, "rgs", n)
    cfg = paradox.cell_config(spec, "pgpe", "hbox", paradox.Path("/s/runs"), 2000)
    assert cfg["init_from"] == "/s/runs/grad-hbox/last.pt" and (cfg["epochs"], cfg["train_subset"]) == (4, 2000)
    assert cfg["eps_start_epoch"] == cfg["eps_end_epoch"] == 0 and cfg["method"] == "pgpe"
    rgs = paradox.cell_config(spec, "rgs", "ibp", paradox.Path("/s/runs"), 2000)
    assert rgs["population"] == 4 and rgs["epochs"] == 8 and "init_from" not in rgs


def test_time_estimate_formula():
    spec = paradox.resolve("cpu", ["train.epochs=4", "train.batch_size=100", "train.val_subset=50", "eval.subset=10",
                                   "rgs.population=3", "pgpe.population=4"], ["grad", "pgpe"], ["ibp"])
    cert = {"ibp": 0.001, "hbox": 0.002, "crown-ibp": 0.003, "deeppoly": 0.004}
    est = paradox.estimate_seconds({("grad", "ibp"): 0.5, ("pgpe", "ibp"): 2.0}, cert, 0.01, spec, 1000, workers=2)
    # grad: 4 epochs * 10 steps * 0.5 s + 4 * 50 * 0.001; pgpe: 4 * 1000 * 2 / 4 = 2000 images = 2 epochs of
    # 1000: 2 * 10 * 2.0 + 2 * 50 * 0.001
    assert est["cells_s"] == pytest.approx({"grad-ibp": 20.2, "pgpe-ibp": 40.1})
    assert est["eval_per_network_s"] == pytest.approx(10 * 0.02)
    assert est["wall_s"] == pytest.approx((20.2 + 40.1 + 2 * 0.2) / 2)


def test_verdict_is_computed_from_the_cells():
    cells = {"grad-ibp": {"certified": 0.8}, "grad-deeppoly": {"certified": 0.7},
             "rgs-deeppoly": {"certified": 0.82}, "rgs-ibp": {"certified": 0.81}}
    v = report.verdict(cells)
    assert v["paradox_under_grad"] is True and v["gls_reverses"] is True
    assert v["tighter_wins_under_grad"] is False and v["tighter_wins_under_rgs"] is True
    assert v["tighter_wins_under_pgpe"] is None
    cells["rgs-deeppoly"]["certified"] = 0.79
    assert report.verdict(cells)["gls_reverses"] is False


@pytest.mark.parametrize("argv, message", [
    (["paradox", "--preset", "laptop"], "unknown preset 'laptop'"),
    (["paradox", "--relaxations", "ibp,zonotope"], "unknown relaxation(s) zonotope"),
    (["paradox", "--set", "epochs=3"], "--set expects SECTION.KEY=VALUE"),
    (["paradox", "--set", "train.epochs=0"], "train.epochs must be an integer >= 1"),
    (["paradox", "--workers", "0"], "--workers must be >= 1"),
])
def test_bad_options_exit_with_one_line(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_study_directory_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "s"
    spec = paradox.resolve("cpu")
    out.mkdir()
    (out / "study.json").write_text(json.dumps(dict(spec, train=dict(spec["train"], epochs=99))))
    assert main(["paradox", "--out", str(out)]) == 2
    assert "holds a study with other settings" in capsys.readouterr().err


def test_miniature_study_end_to_end_with_resume(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["paradox", "--out", str(out), *MINI]) == 0
    first = capsys.readouterr().out
    assert first.count(": done in") == 8  # 4 trainings + 4 evaluations, one progress line each
    results = json.loads((out / "results.json").read_text())
    assert set(results["cells"]) == {"grad-ibp", "grad-deeppoly", "pgpe-ibp", "pgpe-deeppoly"}
    for name, cell in results["cells"].items():
        assert cell["n_test"] == 32 and 0 <= cell["certified"] <= cell["pgd"] <= cell["natural"] <= 1, name
        assert cell["certified_deeppoly"] <= cell["certified"]
    assert results["pgpe_schedule"] == {"epochs": 1, "images": 64}  # 2 * 64 * (3 - 1) / 4 = 64 images
    assert results["bound_evaluations"]["pgpe-ibp"] == results["bound_evaluations"]["grad-ibp"] + 64 * 4
    md = (out / "results.md").read_text()
    assert "| relaxation | grad | pgpe |" in md and "| deeppoly |" in md and "Verdict" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    pgpe = checkpoint.load(out / "runs" / "pgpe-deeppoly")
    assert pgpe["config"]["init_from"].endswith("grad-deeppoly/last.pt") and pgpe["config"]["population"] == 4
    assert not torch.equal(pgpe["theta"], checkpoint.load(out / "runs" / "grad-deeppoly")["theta"])  # PGPE moved it

    # interrupt one run: the state a kill after its first epoch leaves (checkpoint, no summary, a logged tail)
    victim = out / "runs" / "grad-ibp"
    theta_uninterrupted = checkpoint.load(victim)["theta"]
    for f in victim.iterdir():
        f.unlink()
    (out / "evals" / "grad-ibp.json").unlink()
    assert train.main(["--config", str(out / "configs" / "grad-ibp.json"), "--out", str(victim),
                       "--halt-after-epoch", "1"]) == 0
    assert checkpoint.load(victim)["epoch"] == 1 and not (victim / "summary.json").exists()
    with open(victim / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 2, "junk": True}) + "\n")
    others = {n: (out / "runs" / n / "last.pt").stat().st_mtime_ns for n in ("grad-deeppoly", "pgpe-ibp", "pgpe-deeppoly")}
    capsys.readouterr()

    assert main(["paradox", "--out", str(out), *MINI]) == 0
    second = capsys.readouterr().out
    assert "train grad-ibp: resuming" in second and "evaluate grad-ibp: starting" in second
    assert second.count("already done, skipped") == 6 and second.count(": done in") == 2
    assert {n: (out / "runs" / n / "last.pt").stat().st_mtime_ns for n in others} == others
    resumed = checkpoint.load(victim)
    assert resumed["epoch"] == 2 and torch.equal(resumed["theta"], theta_uninterrupted)  # exact resume
    assert "--resume" in (out / "logs" / "train-grad-ibp.log").read_text()

    assert main(["paradox", "--out", str(out), *MINI]) == 0  # nothing left to do
    third = capsys.readouterr().out
    assert third.count("already done, skipped") == 8 and "starting" not in third and "resuming" not in third


def test_a_terminated_study_stops_and_a_rerun_completes(tmp_path):
    """SIGTERM (or Ctrl-C) while a run trains: the study exits 130 with one line; the same command then
    finishes the grid, whatever state the interrupted run was left in."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    out = tmp_path / "study"
    argv = [sys.executable, "-m", "gls.study", "paradox", "--out", str(out), "--optimizers", "grad",
            "--relaxations", "ibp", *MINI[6:]]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()
    assert "train grad-ibp: starting" in line
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted; re-run the same command" in err
    assert not (out / "evals" / "grad-ibp.json").exists()
    assert main(["paradox", "--out", str(out), "--optimizers", "grad", "--relaxations", "ibp", *MINI[6:]]) == 0
    assert set(json.loads((out / "results.json").read_text())["cells"]) == {"grad-ibp"}
