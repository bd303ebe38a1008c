"""PGD and the certification table, on small models and a hand-written checkpoint."""
import json

import pytest
import torch
from torch import nn

from gls.app import certify, checkpoint, data, models
from gls.app.attack import pgd_robust
from gls.bounds import compute_bounds
from gls.net import Network
from gls.nn import Normalize
from gls.problem import certified

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pgd_is_exact_on_a_linear_classifier():
    """For an affine classifier the worst case is a corner of the box, which both IBP (exact on one
    affine layer) and PGD (signed gradient steps reach it) find: the two verdicts agree."""
    torch.manual_seed(1)
    model = nn.Sequential(Normalize((0.5,), (0.5,)), nn.Flatten(), nn.Linear(16, 4)).eval()
    x, y = torch.rand(64, 1, 4, 4), torch.randint(0, 4, (64,))
    y = model(x).argmax(1)  # all naturally correct
    eps = 0.05
    attack = pgd_robust(model, x, y, eps, steps=30, restarts=2, generator=torch.Generator().manual_seed(0))
    cert = certified(compute_bounds(model, x, eps, method="ibp", labels=y).lower[0])
    assert torch.equal(attack, cert) and 0 < int(cert.sum()) < 64


def test_pgd_breaks_misclassified_and_keeps_eps_zero():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.rand(8, 1, 2, 2)
    y = model(x).argmax(1)
    assert pgd_robust(model, x, y, 0.0).all()
    assert not pgd_robust(model, x, (y + 1) % 3, 0.01, steps=2).any()
    with pytest.raises(ValueError, match="eps"):
        pgd_robust(model, x, y, -1.0)


def _tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = models.build("mlp", (1, 28, 28), (0.1307,), (0.3081,), width=8)
    net = Network.from_module(model)
    theta = net.layout.flatten(net.params()).detach()[0]
    cfg = {"dataset": "mnist", "net": "mlp", "width": 8, "eps": 0.01, "data_dir": None}
    checkpoint.save({"config": cfg, "theta": theta, "buffers": dict(model.named_buffers()), "epoch": 1},
                    tmp_path / checkpoint.LAST)
    return model, theta


def test_evaluate_orders_the_accuracies(tmp_path):
    model, theta = _tiny_checkpoint(tmp_path)
    split = data.load("mnist").test.subset(48)
    res = certify.evaluate(model, split, 0.005, batch_size=16, pgd_steps=5)
    acc = res["accuracy"]
    assert res["n"] == 48
    for m in ("ibp", "crown-ibp", "deeppoly"):
        assert acc[m] <= acc["best"] <= acc["pgd"] <= acc["natural"]
    assert acc["best"] >= max(acc["ibp"], acc["crown-ibp"], acc["deeppoly"])
    assert "certified deeppoly" in certify.format_table(res)
    reloaded, _ = checkpoint.model_from_checkpoint(checkpoint.load(tmp_path))
    assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), model.parameters()))


def test_certify_cli(tmp_path, capsys):
    _tiny_checkpoint(tmp_path)
    out = tmp_path / "res.json"
    assert certify.main([str(tmp_path), "--subset", "20", "--pgd-steps", "2", "--methods", "ibp,crown",
                         "--json", str(out), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "certified ibp" in text and "certified deeppoly" in text and "natural" in text
    assert f"checkpoint {tmp_path / checkpoint.LAST} (end of epoch 1; mlp)" in text  # best.pt absent: last.pt
    assert certify.main([str(tmp_path), "--threads", "-1"]) == 2
    assert "--threads must be >= 0" in capsys.readouterr().err
    assert json.loads(out.read_text())["n"] == 20
    assert certify.main([str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("gls.certify: error: no checkpoint") and "\n" not in err
    assert certify.main([str(tmp_path), "--methods", "zonotope"]) == 2
    assert "unknown relaxation" in capsys.readouterr().err


def test_certify_table_says_which_mode_and_sound_is_the_default(tmp_path, capsys):
    _tiny_checkpoint(tmp_path)
    assert certify.main([str(tmp_path), "--subset", "4", "--pgd-steps", "1", "--methods", "ibp"]) == 0
    assert "sound bounds" in capsys.readouterr().out
    assert certify.main([str(tmp_path), "--subset", "4", "--pgd-steps", "1", "--methods", "ibp", "--no-sound"]) == 0
    assert "float32 bounds" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--subset", "-5"], "--subset must be a positive number"),
    (["--subset", "0"], "--subset must be a positive number"),
    (["--methods", ","], "--methods names no relaxation"),
    (["--data-dir", "{tmp}/nowhere"], "does not exist"),
    (["--data-dir", "{tmp}/last.pt"], "is not a directory"),
    (["--json", "{tmp}/nodir/r.json"], "is not a writable directory"),
    (["--json", "{tmp}/last.pt/r.json"], "is not a writable directory"),
    (["--subs", "3"], "unrecognized arguments"),
    (["--which", "best"], "cannot read checkpoint"),
] + ([(["--device", "cuda"], "no CUDA device")] if not torch.cuda.is_available() else []))
def test_certify_cli_errors_are_one_line(tmp_path, capsys, argv, message):
    _tiny_checkpoint(tmp_path)
    if "best" in argv:  # a corrupt best.pt is an error, not a silent fallback to last.pt
        (tmp_path / checkpoint.BEST).write_bytes(b"corrupt")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = certify.main([str(tmp_path), "--which", "last", "--pgd-steps", "1", "--methods", "ibp", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err and "Traceback" not in err, err


def test_certify_says_when_it_uses_last_pt(tmp_path, capsys):
    _tiny_checkpoint(tmp_path)
    assert certify.main([str(tmp_path), "--subset", "2", "--pgd-steps", "1", "--methods", "ibp"]) == 0
    assert "no best.pt; using last.pt" in capsys.readouterr().err
