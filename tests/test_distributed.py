"""gls.train on 2 and 3 CPU processes (gloo, 127.0.0.1 only) against the single-process run.

PGPE must give the bit-identical centre, sigma and metrics; RGS and plain gradients split the samples
or the batch and agree to float rounding (RGS_ATOL); a 2-rank checkpoint resumes on 3 ranks; a rank
that dies or hangs stops the job within --dist-timeout with one clear line and an intact checkpoint;
a rank whose centre drifts is caught by the checksum. Runs are tiny (64 MNIST images, a width-4 MLP)
and the ranks are forked from one forkserver that has imported gls and the data (tests/dist_worker.py).
"""
import json
import multiprocessing as mp
import os
import signal
import socket
import time
from pathlib import Path

import pytest
import torch

import gls.app.train as train
from gls.app import certify, checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

# explicit network, method, relaxation and epochs: without a preset the default run would supply them
TINY = ["--net", "mlp", "--method", "grad", "--relaxation", "ibp", "--epochs", "20",
        "--train-subset", "64", "--val-subset", "32", "--test-subset", "32", "--batch-size", "32",
        "--width", "4", "--certify", "ibp", "--pgd-steps", "2", "--eps-end-epoch", "1",
        "--lr-milestones", "", "--progress", "false", "--dist-timeout", "20", "--sync-check-every", "1"]
PGPE = ["--method", "pgpe", "--population", "6", "--relaxation", "crown-ibp", "--seed", "3", "--epochs", "2"]
# RGS/grad sum the member (or batch-share) gradients in another order than one process: the centres
# after 4 Adam steps of lr 1e-3 agree to this (measured differences are below 1e-7).
RGS_ATOL = 1e-6
TIMED = ("time_s", "elapsed_s")


@pytest.fixture(scope="module")
def ctx():
    """The forkserver context, its server started with dist_worker imported (Python 3.11's forkserver
    does not pass sys.path on to its preload imports, so PYTHONPATH says where tests/ and gls are)."""
    from multiprocessing import forkserver

    c = mp.get_context("forkserver")
    c.set_forkserver_preload(["dist_worker"])
    before = os.environ.get("PYTHONPATH")
    here = Path(__file__).resolve().parent
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent), *([before] if before else [])])
    try:
        forkserver.ensure_running()
    finally:
        if before is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = before
    return c


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(ctx, size, argv, logdir, tamper_rank=None, entry="train"):
    import dist_worker

    port = _port()
    procs = []
    for r in range(size):
        p = ctx.Process(target=dist_worker.rank_main,
                        args=(r, size, port, argv, str(logdir / f"rank{r}.log"), tamper_rank, entry))
        p.start()
        procs.append(p)
    return procs


def _join(procs, timeout=120):
    end = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
        p.join()
    assert not alive, "ranks still running after the time limit"
    return [p.exitcode for p in procs]


def _distributed(ctx, tmp_path, name, size, *args, tamper_rank=None):
    out = tmp_path / name
    out.mkdir()
    codes = _join(_launch(ctx, size, [*TINY, "--out", str(out), *args], out, tamper_rank))
    return codes, out


def _single(tmp_path, name, *args):
    out = tmp_path / name
    assert train.main([*TINY, "--out", str(out), *args]) == 0
    return out


def _rows(out):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMED}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def _log(out, rank):
    return (out / f"rank{rank}.log").read_text()


@pytest.fixture(scope="module")
def pgpe_single(tmp_path_factory):
    return _single(tmp_path_factory.mktemp("single"), "pgpe", *PGPE)


@pytest.mark.parametrize("size, chunk", [(2, "1"), (3, "0")])  # 2 ranks: 1 + 2 pairs, a chunk each
def test_pgpe_on_n_ranks_is_bit_identical_to_one_process(ctx, tmp_path, pgpe_single, size, chunk):
    codes, out = _distributed(ctx, tmp_path, f"pgpe{size}", size, *PGPE, "--pair-chunk", chunk)
    assert codes == [0] * size, _log(out, 0)
    a, b = checkpoint.load(pgpe_single), checkpoint.load(out)
    assert torch.equal(a["theta"], b["theta"]) and torch.equal(a["optimizer"]["sigma"], b["optimizer"]["sigma"])
    assert torch.equal(a["optimizer"]["velocity"], b["optimizer"]["velocity"])
    assert _rows(out) == _rows(pgpe_single)  # the gathered metrics and the sharded validation too
    one, many = (json.loads((d / "summary.json").read_text()) for d in (pgpe_single, out))
    assert one["world_size"] == 1 and many["world_size"] == size
    assert json.loads((out / "config.json").read_text())["world_size"] == size
    for key in ("natural", "ibp", "best"):  # sharded certification, counts gathered
        assert many["test"]["accuracy"][key] == one["test"]["accuracy"][key]
    assert many["test"]["n"] == 32
    assert "epoch 2/2" in _log(out, 0) and _log(out, 1) == ""  # rank 0 alone prints


@pytest.mark.parametrize("size, args", [
    (2, ["--method", "rgs", "--population", "6", "--antithetic", "true"]),  # samples split (3 pairs: 1 + 2)
    (3, ["--method", "rgs", "--population", "4", "--antithetic", "true"]),  # 2 pairs < 3 ranks: batch split
    (3, ["--method", "grad", "--train-subset", "66"]),  # batch split: 10 + 11 + 11 rows, then 0 + 1 + 1
])
def test_rgs_and_grad_on_n_ranks_match_one_process(ctx, tmp_path, size, args):
    args = [*args, "--relaxation", "ibp", "--seed", "5", "--epochs", "2"]
    single = _single(tmp_path, "single", *args)
    codes, out = _distributed(ctx, tmp_path, "dist", size, *args)
    assert codes == [0] * size, _log(out, 0)
    a, b = checkpoint.load(single), checkpoint.load(out)
    assert a["step"] == b["step"]
    torch.testing.assert_close(b["theta"], a["theta"], rtol=0, atol=RGS_ATOL)
    for r1, r2 in zip(_rows(single), _rows(out)):
        assert r1["train_natural_acc"] == pytest.approx(r2["train_natural_acc"], abs=1e-6)
        assert r1["train_loss"] == pytest.approx(r2["train_loss"], rel=1e-5)
        assert r1["val_natural_acc"] == r2["val_natural_acc"]


def test_certify_on_three_ranks_counts_what_one_process_counts(ctx, tmp_path, pgpe_single):
    argv = [str(pgpe_single), "--subset", "32", "--methods", "ibp,deeppoly", "--pgd-steps", "2", "--eps", "0.03"]
    assert certify.main([*argv, "--json", str(tmp_path / "one.json")]) == 0
    codes = _join(_launch(ctx, 3, [*argv, "--json", str(tmp_path / "three.json")], tmp_path, entry="certify"))
    assert codes == [0, 0, 0], _log(tmp_path, 0)
    one, three = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "three.json"))
    assert three["n"] == one["n"] == 32 and three["ranks"] == 3
    for key in ("natural", "ibp", "deeppoly", "best"):
        assert three["accuracy"][key] == one["accuracy"][key]
    assert one["accuracy"]["deeppoly"] > 0  # samples certified, spread over the shards
    assert "certified deeppoly" in _log(tmp_path, 0) and _log(tmp_path, 2) == ""


def test_a_two_rank_checkpoint_resumes_on_three_ranks(ctx, tmp_path, pgpe_single):
    codes, out = _distributed(ctx, tmp_path, "part", 2, *PGPE, "--halt-after-epoch", "1")
    assert codes == [0, 0], _log(out, 0)
    half = checkpoint.load(out)
    assert half["epoch"] == 1 and half["config"]["world_size"] == 2
    codes = _join(_launch(ctx, 3, ["--resume", str(out), "--progress", "false"], out))
    assert codes == [0, 0, 0], _log(out, 0)
    a, b = checkpoint.load(pgpe_single), checkpoint.load(out)
    assert b["epoch"] == 2 and b["config"]["world_size"] == 3
    assert torch.equal(a["theta"], b["theta"]) and torch.equal(a["optimizer"]["sigma"], b["optimizer"]["sigma"])
    assert _rows(out) == _rows(pgpe_single)
    assert json.loads((out / "summary.json").read_text())["world_size"] == 3


@pytest.mark.parametrize("how", ["killed", "hung"])
def test_a_lost_rank_stops_the_job_with_one_line_and_an_intact_checkpoint(ctx, tmp_path, how):
    out = tmp_path / "run"
    out.mkdir()
    argv = [*TINY, "--out", str(out), *PGPE, "--epochs", "200", "--dist-timeout", "4"]
    procs = _launch(ctx, 2, argv, out)
    try:
        end = time.monotonic() + 60
        while not (out / "last.pt").exists() and time.monotonic() < end and procs[0].is_alive():
            time.sleep(0.05)
        assert (out / "last.pt").exists(), _log(out, 0)
        os.kill(procs[1].pid, signal.SIGKILL if how == "killed" else signal.SIGSTOP)
        t0 = time.monotonic()
        procs[0].join(30)
        waited = time.monotonic() - t0
        assert procs[0].exitcode == 1, _log(out, 0)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
    err = [line for line in _log(out, 0).splitlines() if "error" in line]
    assert len(err) == 1 and err[0].startswith("gls.train: error: rank 0 of 2: the "), err
    assert "Traceback" not in _log(out, 0)
    if how == "hung":  # no answer: the job stops at the timeout we set, not torch's 30-minute default
        assert "did not answer within 4 s" in err[0] and 3.0 < waited < 20
    last = checkpoint.load(out)
    assert last["epoch"] >= 1 and torch.isfinite(last["theta"]).all() and last["config"]["world_size"] == 2
    assert not list(out.glob("*.tmp"))


def test_a_rank_whose_centre_drifts_is_caught_by_the_checksum(ctx, tmp_path):
    codes, out = _distributed(ctx, tmp_path, "drift", 2, *PGPE, tamper_rank=1)
    assert codes == [1, 1]
    for r in (0, 1):
        assert "gls.train: error: the centre on rank(s) 1 differs from rank 0's at step 1" in _log(out, r)
    assert not (out / "last.pt").exists()


def test_too_few_pairs_for_the_ranks_is_a_clear_error(ctx, tmp_path):
    codes, out = _distributed(ctx, tmp_path, "few", 3, "--method", "pgpe", "--population", "4", "--epochs", "1")
    assert codes == [1, 1, 1]
    assert "2 antithetic pairs, fewer than the 3 ranks: use at least --population 6" in _log(out, 0)


def test_a_distributed_run_config_is_a_valid_config_file_and_bad_options_are_one_line(pgpe_single, capsys):
    from gls.app import config

    cfg = config.resolve(config.parse_args(["--config", str(pgpe_single / "config.json")]))
    assert not hasattr(cfg, "world_size") and cfg.population == 6  # recorded by the launcher, not an option
    for argv, message in ((["--dist-timeout", "0"], "--dist-timeout must be a number > 0"),
                          (["--sync-check-every", "-1"], "--sync-check-every must be an integer >= 0")):
        assert train.main([*TINY, *argv]) == 2
        assert message in capsys.readouterr().err
