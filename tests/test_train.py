"""python -m gls.train: artefacts, exact resume, CLI errors, non-finite members and centres.

Runs are tiny (64 MNIST training images, a width-4 MLP, cheap evaluation) so the file stays fast.
"""
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

import gls.app.train as train
from gls import smoothing
from gls.app import checkpoint, config
from gls.app.data import Split

pytestmark = pytest.mark.usefixtures("one_thread")


# explicit network, method, relaxation and epochs: without a preset the default run would supply them
TINY = ["--net", "mlp", "--method", "grad", "--relaxation", "ibp", "--epochs", "20",
        "--train-subset", "64", "--val-subset", "32", "--test-subset", "32", "--batch-size", "32",
        "--width", "4", "--certify", "ibp,deeppoly", "--pgd-steps", "2", "--eps-end-epoch", "1",
        "--lr-milestones", "", "--progress", "false"]


def _run(tmp_path, name, *args):
    out = tmp_path / name
    return train.main([*TINY, "--out", str(out), *args]), out


def test_one_epoch_writes_every_artefact(tmp_path, capsys):
    code, out = _run(tmp_path, "run", "--epochs", "1", "--method", "rgs", "--relaxation", "crown-ibp")
    assert code == 0
    for f in ("config.json", "metrics.jsonl", "last.pt", "best.pt", "summary.json", "curves.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "rgs" and cfg["relaxation"] == "crown-ibp" and cfg["population"] == 4
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "eps", "sigma_mean", "val_natural_acc", "val_certified_acc", "time_s",
                "nonfinite_members", "train_natural_acc", "train_certified_acc"):
        assert key in row, key
    assert row["eps"] == pytest.approx(0.1) and row["sigma_mean"] == pytest.approx(0.01)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["test"]["n"] == 32
    assert set(summary["test"]["accuracy"]) == {"natural", "pgd", "ibp", "deeppoly", "best"}
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    text = capsys.readouterr().out
    assert "certified best" in text and "epoch 1/1" in text
    # a second run into the same directory is refused, with one line
    assert train.main([*TINY, "--out", str(out), "--epochs", "1"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_pgpe_pair_chunks_train_the_same_weights(tmp_path):
    args = ["--epochs", "1", "--method", "pgpe", "--population", "6", "--relaxation", "crown-ibp", "--seed", "3"]
    code, whole = _run(tmp_path, "whole", *args)
    assert code == 0
    code, chunked = _run(tmp_path, "chunked", *args, "--pair-chunk", "1")
    assert code == 0
    a, b = checkpoint.load(whole), checkpoint.load(chunked)
    torch.testing.assert_close(a["theta"], b["theta"], rtol=0, atol=1e-6)
    rows = [json.loads((d / "metrics.jsonl").read_text().splitlines()[0]) for d in (whole, chunked)]
    assert rows[0]["train_natural_acc"] == pytest.approx(rows[1]["train_natural_acc"])


@pytest.mark.parametrize("method", ["pgpe", "rgs"])
def test_resume_after_a_kill_is_exact(tmp_path, method):
    args = ["--epochs", "3", "--method", method, "--relaxation", "ibp", "--seed", "7"]
    code, full = _run(tmp_path, "full", *args)
    assert code == 0
    code, part = _run(tmp_path, "part", *args, "--halt-after-epoch", "1")
    assert code == 0 and not (part / "summary.json").exists()
    assert checkpoint.load(part)["epoch"] == 1
    with open(part / "metrics.jsonl", "a") as f:  # a killed run may have logged past its checkpoint
        f.write(json.dumps({"epoch": 2, "junk": True}) + "\n")
    assert train.main(["--resume", str(part)]) == 0
    a, b = checkpoint.load(full), checkpoint.load(part)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    assert torch.equal(a["theta"], b["theta"])
    if method == "pgpe":
        assert torch.equal(a["optimizer"]["sigma"], b["optimizer"]["sigma"])
    rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and not any("junk" in r for r in rows)
    full_rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in full_rows]


@pytest.mark.parametrize("argv, message", [
    (["--net", "resnet"], "unknown net 'resnet'"),
    (["--eps", "-0.1"], "--eps must be a number >= 0"),
    (["--dataset", "cifar10", "--data-dir", "{tmp}"], "CIFAR-10 not found"),
    (["--method", "pgpe", "--population", "3"], "--population must be even"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--config", "{tmp}/none.toml"], "config file"),
    (["--resume", "{tmp}"], "no checkpoint"),
    (["--data-dir", "{tmp}/nowhere"], "does not exist"),
    (["--epoch", "2"], "unrecognized arguments: --epoch"),
] + ([(["--device", "cuda"], "no CUDA device")] if not torch.cuda.is_available() else []))
def test_bad_options_exit_with_one_line(tmp_path, capsys, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = train.main([*argv, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and message in err and "\n" not in err and "Traceback" not in err


def test_resume_refuses_a_config_file_and_a_different_network(tmp_path, capsys):
    code, run = _run(tmp_path, "r", "--epochs", "2", "--halt-after-epoch", "1")
    assert code == 0
    capsys.readouterr()
    f = tmp_path / "c.toml"
    f.write_text("epochs = 3\n")
    for argv, message in ((["--config", str(f)], "cannot be combined with --resume"),
                          (["--net", "cnn3"], "--net cannot change when resuming")):
        assert train.main(["--resume", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err


def test_config_file_presets_and_precedence(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('preset = "mnist-0.3"\nnet = "cnn5"\nbatch-size = 64\n')
    cfg = config.resolve(config.parse_args(["--config", str(f), "--batch-size", "16"]))
    assert (cfg.eps, cfg.net, cfg.batch_size, cfg.epochs, cfg.train_eps) == (0.3, "cnn5", 16, 70, 0.3)
    cfg = config.resolve(config.parse_args(["--preset", "cifar10-2/255", "--method", "pgpe"]))
    assert cfg.eps == pytest.approx(2 / 255) and cfg.lr == 1e-2 and cfg.optimizer == "clipup"
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"nope": 1}))
    with pytest.raises(config.ConfigError, match="unknown option 'nope'"):
        config.resolve(config.parse_args(["--config", str(j)]))
    assert config.parse_args(["--eps", "2/255"])["eps"] == pytest.approx(2 / 255)


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0 and "--population" in text and "--preset" in text and "--train-subset" not in text


def test_cli_error_in_a_subprocess():
    done = subprocess.run([sys.executable, "-m", "gls.train", "--net", "nope"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "unknown net" in done.stderr


def test_nonfinite_members_are_counted_and_training_goes_on(tmp_path, monkeypatch):
    real = train.population_loss

    def poisoned(*args, **kwargs):
        fn = real(*args, **kwargs)

        def loss(pop):
            out = fn(pop)
            bad = torch.zeros_like(out)
            bad[0] = math.nan
            return out + bad
        return loss

    monkeypatch.setattr(train, "population_loss", poisoned)
    code, out = _run(tmp_path, "nan", "--epochs", "1", "--method", "pgpe", "--population", "4")
    assert code == 0
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert row["nonfinite_members"] == 2 and math.isfinite(row["train_loss"])


def test_nonfinite_centre_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real = train.make_optimizer

    class Faulty:
        def __init__(self, opt):
            self.opt = opt

        def __getattr__(self, name):
            return getattr(self.opt, name)

        def step(self, loss_fn, step):
            stats = self.opt.step(loss_fn, step)
            if step == 3:  # second step of epoch 2
                self.opt.theta.data.fill_(math.nan)
                smoothing.check_center(self.opt.theta, step)
            return stats

    monkeypatch.setattr(train, "make_optimizer", lambda cfg, theta, *rest: Faulty(real(cfg, theta, *rest)))
    code, out = _run(tmp_path, "div", "--epochs", "3")
    assert code == 3
    err = capsys.readouterr().err
    assert "non-finite at step 3" in err and "last.pt" in err
    last = checkpoint.load(out)
    assert last["epoch"] == 1 and torch.isfinite(last["theta"]).all()
    assert json.loads((out / "summary.json").read_text())["status"] == "diverged"


def test_cnn7_deeppoly_rgs_plans_checkpoints_and_resumes_exactly(tmp_path, capsys, monkeypatch):
    """The issue's `gls.train --net cnn7 --relaxation deeppoly --method rgs`, small: width 2, one image per
    step, eps at its target from the first step, a budget small enough that the back-substitutions run
    in blocks under checkpoint. It prints its plan (with the batch's unstable counts), trains 3 steps,
    checkpoints, and the resumed run ends where an uninterrupted one does."""
    import gls.bounds
    calls = []

    def counting(fn, *args, **kwargs):
        calls.append(args)
        return torch.utils.checkpoint.checkpoint(fn, *args, **kwargs)
    monkeypatch.setattr(gls.bounds, "checkpoint", counting)
    args = ["--net", "cnn7", "--width", "2", "--method", "rgs", "--relaxation", "deeppoly", "--population", "2",
            "--batch-size", "1", "--train-subset", "3", "--val-subset", "1", "--test-subset", "1", "--epochs", "2",
            "--eps-end-epoch", "0", "--certify", "ibp", "--pgd-steps", "1", "--max-memory", "64MB",
            "--progress", "false", "--seed", "5"]
    assert train.main([*args, "--out", str(tmp_path / "part"), "--halt-after-epoch", "1"]) == 0
    out = capsys.readouterr().out
    assert "IBP-unstable neurons per ReLU layer" in out and "memory: one step needs about" in out and "time:" in out
    assert calls  # the step's back-substitutions went block by block
    ck = checkpoint.load(tmp_path / "part")
    assert ck["epoch"] == 1 and ck["step"] == 3
    assert train.main(["--resume", str(tmp_path / "part")]) == 0
    assert train.main([*args, "--out", str(tmp_path / "full")]) == 0
    a, b = checkpoint.load(tmp_path / "part"), checkpoint.load(tmp_path / "full")
    assert a["step"] == b["step"] == 6 and torch.equal(a["theta"], b["theta"])


@pytest.mark.parametrize("seconds, timed", [({1: 0.5, 4: 3.0}, [1, 4]),  # slow: stops at the first 2 s timing
                                           ({}, [1, 4, 16, 64, 256])])  # fast: up to one eval batch
def test_validation_is_timed_on_as_few_images_as_take_two_seconds(monkeypatch, seconds, timed):
    """estimate_time's validation timing grows 1, 4, 16, ... images until a timing takes VAL_TIMING_S or
    reaches an eval batch, and extrapolates to the whole validation set (a CNN7 DeepPoly batch took an hour)."""
    seen = []
    monkeypatch.setattr(train, "validate", lambda net, split, *a: seen.append(len(split)))
    monkeypatch.setattr(train, "time_call", lambda fn: (fn(), seconds.get(seen[-1], 0.01))[1])
    r = SimpleNamespace(val=Split(torch.zeros(1000, 1, 2, 2), torch.zeros(1000, dtype=torch.long)),
                        cfg=SimpleNamespace(eval_batch_size=256, eps=0.1, relaxation="deeppoly", backend=None),
                        world=SimpleNamespace(active=False), net=None, val_sub=None, budget=None)
    assert train.validation_seconds(r) == pytest.approx(seconds.get(timed[-1], 0.01) * 1000 / timed[-1])
    assert seen == timed


def test_a_long_validation_says_how_far_it_got(monkeypatch):
    """validate tells its `say` how many images are bounded every REPORT_S (here: every pass)."""
    from gls.app import models
    from gls.net import Network

    monkeypatch.setattr(train, "REPORT_S", 0.0)
    net = Network.from_module(models.build("mlp", (1, 28, 28), (0.1307,), (0.3081,), width=4).eval())
    split = Split(torch.rand(5, 1, 28, 28), torch.arange(5))
    said = []
    out = train.validate(net, split, 0.1, "ibp", 4, None, SimpleNamespace(shard=lambda s: s, active=False), sub=2,
                         say=lambda line, **_: said.append(line))
    assert said == [f"validation: {n} of 5 images bounded" for n in (2, 4, 5)]
    assert out["val_samples"] == 5


def test_an_epoch_without_a_progress_bar_says_how_far_it_got(tmp_path, capsys, monkeypatch):
    """With --progress false (or stderr not a terminal) an epoch prints a line every REPORT_S (here:
    every step), so a long CNN7 epoch is not silent."""
    monkeypatch.setattr(train, "REPORT_S", 0.0)
    code, _ = _run(tmp_path, "run", "--epochs", "1")
    assert code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch 1/1: step")]
    assert [line.split(",")[0] for line in lines] == ["epoch 1/1: step 1/2", "epoch 1/1: step 2/2"]
    assert all("run ETA" in line for line in lines)
