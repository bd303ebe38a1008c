"""The default run and its plain-gradient baseline (gls.app.config.DEFAULT_RUN, gls.app.baseline)."""
from __future__ import annotations

import json
from pathlib import Path

from gls.app import baseline, config
from gls.app.study import paradox


def _resolve(*argv):
    return config.resolve(config.parse_args(list(argv)))


def test_default_run_is_the_quick_studys_rgs_deeppoly_cell():
    cfg = _resolve()
    spec = paradox.resolve("quick")
    cell = paradox.cell_config(spec, "rgs", "deeppoly", Path("runs"), n_train=10000)
    differ = {k: (getattr(cfg, k), v) for k, v in cell.items() if k not in paradox.CELL_ONLY and getattr(cfg, k) != v}
    assert not differ
    ev = spec["eval"]
    assert (cfg.test_subset, cfg.pgd_steps, cfg.pgd_restarts) == (ev["subset"], ev["pgd_steps"], ev["pgd_restarts"])
    assert sorted(cfg.certify) == sorted(paradox.RELAXATIONS)


def test_the_default_run_does_not_leak_into_presets_or_other_networks():
    cfg = _resolve("--preset", "mnist-0.1")
    assert (cfg.method, cfg.relaxation, cfg.train_subset, cfg.test_subset, cfg.width) == ("grad", "ibp", None, None, None)
    cfg = _resolve("--net", "cnn3")  # the default run's budget on another network, at that network's own width
    assert (cfg.net, cfg.width, cfg.method, cfg.relaxation) == ("cnn3", None, "rgs", "deeppoly")
    cfg = _resolve("--method", "grad")  # the baseline cell: the method's own samples and sigma
    assert (cfg.population, cfg.sigma, cfg.epochs, cfg.width) == (1, 0.0, 4, 8)


def _study(tmp_path: Path, cfg) -> Path:
    """A committed-study directory whose spec is the quick preset, with two grad cells and one RGS cell."""
    def cell(opt, relax, acc):
        return {"optimizer": opt, "relaxation": relax, "natural": acc + 0.1, "certified": acc,
                "certified_deeppoly": acc - 0.01, "pgd": acc + 0.05}
    results = {"spec": paradox.resolve("quick"), "eval_methods": list(paradox.RELAXATIONS),
               "cells": {"grad-ibp": cell("grad", "ibp", 0.61), "grad-deeppoly": cell("grad", "deeppoly", 0.52),
                         "rgs-deeppoly": cell("rgs", "deeppoly", 0.7)}}
    d = tmp_path / "paradox-quick"
    d.mkdir()
    (d / "results.json").write_text(json.dumps(results))
    return tmp_path


def _result():
    acc = {"natural": 0.9, "pgd": 0.8, "best": 0.75, "ibp": 0.7, "hbox": 0.7, "crown-ibp": 0.72, "deeppoly": 0.74}
    return {"accuracy": acc}


def test_the_final_table_shows_the_grad_cells_of_the_matching_study(tmp_path):
    studies = _study(tmp_path, _resolve())
    text = baseline.table(_resolve(), _result(), studies)
    own = next(line for line in text.splitlines() if "this run (rgs deeppoly)" in line)
    assert "90.00 %" in own and "75.00 %" in own and "74.00 %" in own and "80.00 %" in own
    grad_ibp = next(line for line in text.splitlines() if "grad ibp (study)" in line)
    assert "71.00 %" in grad_ibp and "61.00 %" in grad_ibp and "60.00 %" in grad_ibp and "66.00 %" in grad_ibp
    assert "grad deeppoly (study)" in text and "rgs deeppoly (study)" not in text


def test_no_baseline_when_the_budget_or_evaluation_differs(tmp_path):
    studies = _study(tmp_path, _resolve())
    for argv in (["--seed", "1"], ["--epochs", "5"], ["--test-subset", "500"], ["--certify", "ibp,deeppoly"],
                 ["--width", "4"]):
        assert not baseline.matches(_resolve(*argv), json.loads((studies / "paradox-quick" / "results.json").read_text()))
        assert "no committed study" in baseline.table(_resolve(*argv), _result(), studies)
    assert baseline.find(_resolve(), tmp_path / "missing") is None


def test_a_grad_run_without_a_study_is_not_told_to_rerun_with_grad(tmp_path):
    studies = _study(tmp_path, _resolve())
    text = baseline.table(_resolve("--method", "grad", "--seed", "1"), _result(), studies)
    assert "this run is one (--method grad)" in text and "run the same options" not in text
    assert "run the same options with --method grad" in baseline.table(_resolve("--seed", "1"), _result(), studies)
