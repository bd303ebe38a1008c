"""gls.memory: the estimate against measured peaks, the chunks it picks, and the refusal."""
import pytest
import torch

import gls.app.train as train
from gls import memory
from gls.app import models
from gls.net import Network
from gls.objective import population_loss
from gls.smoothing import RGS

from memory_probe import measure

pytestmark = pytest.mark.usefixtures("one_thread")

GiB = 2**30


def _shape(net="cnn7", width=None):
    model = models.build(net, (1, 28, 28), (0.1307,), (0.3081,), width=width)
    return memory.NetShape.of(Network.from_module(model), (1, 28, 28))


def _plan(budget, **kw):
    args = dict(method="rgs", relaxation="crown-ibp", population=4, batch=256, budget=budget)
    return memory.plan_training(_shape(), **{**args, **kw})


@pytest.mark.parametrize("case", [
    dict(kind="train", method="rgs", net="cnn3", relaxation="crown-ibp", eps=0.3, P=4, B=64),
    dict(kind="train", method="rgs", net="cnn7", relaxation="crown-ibp", eps=0.3, P=4, B=16, width=16,
         member_chunk=1, sample_chunk=4),
])
def test_estimate_bounds_the_measured_peak(case):
    """Peak RSS of one step in a fresh process (tests/memory_probe.py) is below the estimate, and the
    estimate is not so loose that it would refuse runs that fit (at most 3x the measurement)."""
    r = measure(**case)
    assert r["measured"] <= r["estimate"] <= 3 * r["measured"], r


def test_preset_mnist_03_rgs_is_chunked_to_fit_24gb():
    """--preset mnist-0.3 --method rgs (cnn7, batch 256, 4 samples): the whole step does not fit in 70 %
    of a 24 GB machine, so members are split first (same numbers), then samples."""
    budget = int(0.7 * 24 * GiB)
    whole = memory.step_bytes(_shape(), method="rgs", relaxation="crown-ibp", population=4, member_chunk=4,
                              sample_chunk=256)
    assert whole > budget  # what the OOM killer met on a 24 GB machine
    plan = _plan(budget)
    assert plan.bytes <= budget and plan.member_chunk * plan.sample_chunk < 4 * 256
    assert plan.member_chunk == 1 or plan.sample_chunk == 256  # members are split before samples
    big = _plan(whole)
    assert (big.member_chunk, big.sample_chunk) == (4, 256)  # no chunking when the whole step fits
    smaller = _plan(budget // 4)
    assert smaller.member_chunk * smaller.sample_chunk < plan.member_chunk * plan.sample_chunk


def test_pgpe_member_chunks_are_whole_pairs():
    plan = memory.plan_training(_shape(), method="pgpe", relaxation="crown-ibp", population=16, batch=256,
                                budget=4 * GiB)
    assert plan.member_chunk % 2 == 0 and plan.bytes <= 4 * GiB


def test_refusal_says_what_fits():
    with pytest.raises(memory.MemoryPlanError, match=r"what fits: --max-memory [\d.]+ GiB or more, or --relaxation crown-ibp"):
        _plan(16 * GiB, relaxation="deeppoly")
    with pytest.raises(memory.MemoryPlanError, match=r"what fits: --member-chunk 1 --sample-chunk \d+ \("):
        _plan(4 * GiB, member_chunk=4, sample_chunk=256)
    with pytest.raises(memory.MemoryPlanError, match=r"what fits: --pair-chunk \d+ --sample-chunk \d+ \("):
        _plan(4 * GiB, method="pgpe", population=16, member_chunk=16, sample_chunk=256)
    with pytest.raises(memory.MemoryPlanError, match="certifying one sample"):
        memory.cert_batch(_shape(), "deeppoly", 256, 2**20)


def test_refusal_comes_at_once_in_one_line(capsys):
    """The CLI refuses before any step (no out-of-memory death minutes later): one line, exit 2."""
    code = train.main(["--preset", "mnist-0.3", "--method", "rgs", "--relaxation", "deeppoly", "--max-memory", "24GB",
                       "--out", "/nonexistent/never-created", "--progress", "false"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "what fits" in err and "\n" not in err


def test_parse_size():
    assert memory.parse_size("24GB") == 24 * GiB and memory.parse_size("512 MiB") == 512 * 2**20
    assert memory.parse_size("1.5g") == int(1.5 * GiB) and memory.parse_size(4096) == 4096
    for bad in ("lots", "-1GB", "0", "12XB"):
        with pytest.raises(ValueError, match="memory size"):
            memory.parse_size(bad)


def test_rgs_chunks_give_the_same_step():
    """Chunks compute the same step up to float rounding (batched kernels of another size may round
    differently; sample pieces change the summation order)."""
    torch.manual_seed(0)
    model = models.build("mlp", (1, 28, 28), (0.1307,), (0.3081,), width=8)
    net = Network.from_module(model)
    theta = net.layout.flatten(net.params()).detach()[0]
    x, y = torch.rand(24, 1, 28, 28), torch.randint(0, 10, (24,))

    def grad(member_chunk, sample_chunk):
        opt = RGS(theta, sigma=0.01, samples=4, seed=3, member_chunk=member_chunk)
        record = {}
        fn = population_loss(net, x, y, eps=0.05, relaxation="crown-ibp", robust_weight=0.5, record=record,
                             sample_chunk=sample_chunk)
        g, losses, ok = opt.gradient(fn, 0)
        return g, losses, record

    g, losses, rec = grad(None, None)
    g1, losses1, rec1 = grad(1, None)
    torch.testing.assert_close(g1, g, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses1, losses, rtol=1e-6, atol=0)
    g2, losses2, rec2 = grad(3, 10)
    torch.testing.assert_close(g2, g, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses2, losses, rtol=1e-5, atol=1e-7)
    for key in rec:
        torch.testing.assert_close(rec2[key], rec[key], rtol=1e-5, atol=1e-6)
