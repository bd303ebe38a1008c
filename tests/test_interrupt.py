"""A run killed inside an epoch resumes bit-exactly from its time-based checkpoint, and can be certified."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import gls.app.train as train
from gls.app import certify, checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
# 16 steps per epoch; --checkpoint-every 0 writes last.pt after every step inside an epoch.
ARGS = ["--net", "mlp", "--train-subset", "128", "--val-subset", "16", "--test-subset", "16", "--batch-size", "8",
        "--width", "8", "--certify", "ibp", "--pgd-steps", "1", "--eps-end-epoch", "2", "--lr-milestones", "1", "--epochs", "2",
        "--method", "rgs", "--relaxation", "crown-ibp", "--seed", "5", "--checkpoint-every", "0", "--progress", "false"]


def _kill_inside_an_epoch(out: Path) -> dict:
    """Start the run in a subprocess, SIGKILL it once last.pt was written inside epoch 2, return that."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gls.train", *ARGS, "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ck = checkpoint.load(out)
            except checkpoint.CheckpointError:
                ck = None
            if ck is not None and ck["epoch"] == 1 and (ck.get("partial") or {}).get("batch", 0) >= 3:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    return checkpoint.load(out)


def test_killed_inside_an_epoch_resumes_bit_exactly(tmp_path, capsys):
    killed = tmp_path / "killed"
    left = _kill_inside_an_epoch(killed)
    assert left["partial"] is not None and 0 < left["partial"]["batch"] < 16  # inside an epoch, not at its end
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 1

    # what it left can be certified, and the table says which checkpoint that was
    assert certify.main([str(killed), "--subset", "8", "--methods", "ibp", "--pgd-steps", "1"]) == 0
    assert "inside epoch 2/2" in capsys.readouterr().out

    assert train.main(["--resume", str(killed)]) == 0
    full = tmp_path / "full"
    assert train.main([*ARGS, "--out", str(full)]) == 0
    a, b = checkpoint.load(full), checkpoint.load(killed)
    assert a["step"] == b["step"] == 32 and a["partial"] is None and b["partial"] is None
    assert torch.equal(a["theta"], b["theta"])
    for k, v in a["optimizer"]["optimizer"]["state"][0].items():
        assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizer"]["optimizer"]["state"][0][k])), k
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (full, killed)]
    drop = ("time_s", "elapsed_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in rows[0]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in rows[1]]
