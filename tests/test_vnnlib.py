"""gls.vnnlib and the VNN-COMP hand-off: `python -m gls.export` writes boxes equal to gls's region bit for bit,
the reader parses them and hand-written VNN-COMP-style files, and `gls.certify --onnx --vnnlib` answers them."""
import csv
from pathlib import Path

import pytest
import torch
from torch import nn

import gls
from gls.app import certify, checkpoint, data
from gls.app import export as export_cli
from gls.problem import input_region, margin_spec
from gls.vnnlib import VnnlibError, ball_of_box, read_vnnlib, verdict, write_vnnlib

pytestmark = pytest.mark.usefixtures("one_thread")

TRAINED = Path(__file__).resolve().parent.parent / "bench" / "data" / "cnn3_mnist_ibp.pt"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The trained cnn3 as a run directory, exported with `python -m gls.export` on 100 test images."""
    root = tmp_path_factory.mktemp("export")
    payload = torch.load(TRAINED, weights_only=False)
    checkpoint.save({**payload, "epoch": 2}, root / checkpoint.LAST)
    out = root / "bench"
    assert export_cli.main([str(root), "--eps", "0.1", "--n", "100", "--out", str(out), "--timeout", "60"]) == 0
    return root, out


def test_exported_boxes_equal_the_region_bit_for_bit(exported):
    _, out = exported
    test = data.load("mnist").test.subset(100)
    lo, hi = input_region(test.x.double(), 0.1, (0.0, 1.0))
    assert (lo == 0).any() and (hi == 1).any()  # clipping to the domain is exercised
    for i in range(100):
        prop = read_vnnlib(out / "vnnlib" / f"img_{i}.vnnlib", num_inputs=784, num_outputs=10)
        assert torch.equal(prop.lo, lo[i]) and torch.equal(prop.hi, hi[i]), i
        assert torch.equal(prop.C, margin_spec(test.y[i:i + 1], 10)[0].double())
        assert torch.equal(prop.d, torch.zeros(9, dtype=torch.float64)) and prop.clauses == [[j] for j in range(9)]


def test_instances_csv_and_readme(exported):
    _, out = exported
    rows = list(csv.reader(open(out / "instances.csv")))
    assert rows == [["model.onnx", f"vnnlib/img_{i}.vnnlib", "60"] for i in range(100)]
    assert "abcrown.py" in (out / "README.txt").read_text()


def test_certify_answers_exported_instances_with_gls_bounds(exported, capsys):
    """The instance's bounds are gls's own bounds of that image (the CLI runs the ONNX network in float64
    on a box at most a few ulps wider than the file's: equal to float32 rounding)."""
    root, out = exported
    model, _ = checkpoint.model_from_checkpoint(checkpoint.load(root))
    test = data.load("mnist").test
    results = set()
    for i in range(6):
        res = certify.certify_instance(out / "model.onnx", out / "vnnlib" / f"img_{i}.vnnlib",
                                       methods=("ibp", "deeppoly"), sound=True)
        for m in ("ibp", "deeppoly"):
            want = gls.compute_bounds(model, test.x[i:i + 1], 0.1, method=m, labels=test.y[i:i + 1]).lower[0, 0]
            got = torch.tensor(res["methods"][m]["clause_bounds"], dtype=torch.float64)
            assert torch.allclose(got, want.double(), atol=1e-4), (i, m)
        results.add(res["result"])
        proved = bool((gls.compute_bounds(model, test.x[i:i + 1], 0.1, method="deeppoly", labels=test.y[i:i + 1],
                                          sound=True).lower > 0).all())
        assert (res["result"] == "unsat") == proved
    assert "unsat" in results
    assert certify.main(["--onnx", str(out / "model.onnx"), "--vnnlib", str(out / "vnnlib" / "img_0.vnnlib"),
                         "--methods", "ibp,deeppoly,alpha-crown"]) == 0
    printed = capsys.readouterr().out
    assert "alpha-crown" in printed and "result: " in printed


HAND_WRITTEN = """; a VNN-COMP-style property, written by hand
(declare-const X_0 Real)
(declare-const X_1 Real)
(declare-const X_2 Real)
(declare-const Y_0 Real)
(declare-const Y_1 Real)
(declare-const Y_2 Real)

; input box
(assert (>= X_0 -0.5))  (assert (<= X_0 0.5))
(assert (and (<= X_1 1.0e-1) (>= X_1 -1e-1)))
(assert (<= -0.25 X_2))
(assert (>= 0.25 X_2))

; unsafe if class 0 is not the strict winner, or if Y_0 exceeds 3
(assert (or
    (and (>= Y_1 Y_0))
    (and (<= Y_0 Y_2))
    (and (>= Y_0 3.0) (<= (- Y_1 Y_2) -1))
))
"""


def test_a_hand_written_vnncomp_file_with_a_multi_clause_disjunction(tmp_path):
    path = tmp_path / "prop.vnnlib"
    path.write_text(HAND_WRITTEN)
    prop = read_vnnlib(path)
    assert prop.lo.tolist() == [-0.5, -0.1, -0.25] and prop.hi.tolist() == [0.5, 0.1, 0.25]
    # rows r prove their clause when min C_r y > d_r
    assert prop.C.tolist() == [[1, -1, 0], [1, 0, -1], [-1, 0, 0], [0, 1, -1]]
    assert prop.d.tolist() == [0, 0, -3.0, -1.0]
    assert prop.clauses == [[0], [1], [2, 3]]


def test_the_verdict_agrees_with_sampling(tmp_path):
    """A clause proved infeasible by the bounds has no sampled point satisfying it; with the box centred
    where class 0 wins by far, every clause is proved."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[2].bias.copy_(torch.tensor([2.0, -1.0, -1.0]))
    path = tmp_path / "prop.vnnlib"
    declarations, _, rest = HAND_WRITTEN.partition("; input box")
    box = "".join(f"(assert (>= X_{i} -0.1))\n(assert (<= X_{i} 0.1))\n" for i in range(3))
    path.write_text(declarations + box + rest[rest.index("; unsafe"):])  # a ball: what gls bounds
    prop = read_vnnlib(path)
    x, eps, domain = ball_of_box(prop.lo, prop.hi)
    lower = gls.compute_bounds(model.double(), x.reshape(1, 3), torch.tensor([eps]), method="deeppoly",
                               spec=prop.C.unsqueeze(0), domain=domain).lower[0, 0]
    proved = verdict(lower, prop)
    pts = prop.lo + torch.rand(20000, 3, dtype=torch.float64) * (prop.hi - prop.lo)
    y = model.double()(pts)
    for c, idx in enumerate(prop.clauses):
        sat = ((y @ prop.C[idx].T) <= prop.d[idx]).all(-1)
        assert not (proved[c] and sat.any())
    assert proved.any()


def test_ball_of_box_holds_the_box_and_refuses_other_shapes():
    x = torch.rand(50, dtype=torch.float64)
    lo, hi = input_region(x.unsqueeze(0), 0.2, (0.0, 1.0))
    c, eps, domain = ball_of_box(lo[0], hi[0])
    r_lo, r_hi = input_region(c.unsqueeze(0), eps, domain)
    assert (r_lo <= lo).all() and (r_hi >= hi).all() and (lo - r_lo).max() < 1e-13 and (r_hi - hi).max() < 1e-13
    narrow = hi[0].clone()
    inner = ((lo[0] > 0) & (hi[0] < 1)).nonzero()[0]
    narrow[inner] = lo[0][inner] + 0.01
    with pytest.raises(VnnlibError, match="not an L-inf ball"):
        ball_of_box(lo[0], narrow)


BAD = {
    "unbalanced": ("(declare-const X_0 Real", "unbalanced"),
    "missing bound": ("(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)(assert (>= X_0 0))"
                      "(assert (>= Y_1 Y_0))", "X_0 lacks a lower or an upper bound"),
    "input disjunction": ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (or (>= X_0 0) (<= X_0 -1)))",
                          "disjunctions over the inputs"),
    "mixed": ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 Y_0))", "inputs alone or outputs alone"),
    "nonlinear": ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= (* Y_0 Y_0) 1))", "non-linear term"),
    "no output assert": ("(declare-const X_0 Real)(declare-const Y_0 Real)(assert (>= X_0 0))(assert (<= X_0 1))",
                         "no assert on the outputs"),
    "unknown command": ("(check-sat)", "unsupported command"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_reader_errors_name_the_problem(tmp_path, case):
    text, message = BAD[case]
    (tmp_path / "p.vnnlib").write_text(text)
    with pytest.raises(VnnlibError, match=message):
        read_vnnlib(tmp_path / "p.vnnlib")


def test_cli_errors_are_one_line(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    gls.to_onnx(model, (3,), tmp_path / "m.onnx")
    write_vnnlib(tmp_path / "p.vnnlib", torch.zeros(5), torch.ones(5), 0, 2)  # 5 inputs, the network has 3
    cases = [["--onnx", str(tmp_path / "m.onnx"), "--vnnlib", str(tmp_path / "p.vnnlib")],
             ["--onnx", str(tmp_path / "m.onnx"), "--vnnlib", str(tmp_path / "none.vnnlib")],
             ["--onnx", str(tmp_path / "none.onnx"), "--vnnlib", str(tmp_path / "p.vnnlib")],
             ["--onnx", str(tmp_path / "m.onnx")]]
    for argv in cases:
        assert certify.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("gls.certify: error: ") and err.count("\n") == 1, err
    assert export_cli.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gls.export: error: ") and err.count("\n") == 1
