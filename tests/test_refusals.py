"""What gls cannot bound is refused with a clear error, never bounded as something else: subclasses of the
supported layers that compute something else than the layer (their own forward, a redefined method or
weight, forward hooks), and lenient inputs (a string eps, a non-finite Normalize std, float16 weights
for the noise ops, a non-finite sigma)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gls
from gls import noise
from gls.smoothing import PGPE, RGS

pytestmark = pytest.mark.usefixtures("one_thread")


class Doubled(nn.Linear):  # the issue's examples: bounded as a plain Linear / ReLU, the bounds were wrong
    def forward(self, x):
        return 2 * super().forward(x)


class Leaky(nn.ReLU):
    def forward(self, x):
        return F.leaky_relu(x, 0.5)


class WeightStandardised(nn.Conv2d):  # keeps forward, changes what it calls
    def _conv_forward(self, x, weight, bias):
        return super()._conv_forward(x, weight / weight.std(), bias)


def _subclass(base):
    """A subclass of `base` whose forward doubles the layer's output."""
    return type(f"My{base.__name__}", (base,), {"forward": lambda self, x: 2 * base.forward(self, x)})


def _mlp(mid):
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), mid, nn.ReLU(), nn.Linear(8, 3))


def _hooked():
    lin = nn.Linear(8, 8)
    lin.register_forward_hook(lambda m, inputs, out: 2 * out)
    return lin


def _own_forward_attribute():
    lin = nn.Linear(8, 8)
    lin.forward = lambda x: 2 * nn.Linear.forward(lin, x)
    return lin


def _weight_normed():
    return torch.nn.utils.parametrizations.weight_norm(nn.Linear(8, 8))


CASES = {  # name -> (model, the class the error must name)
    "issue_doubled_linear": (lambda: nn.Sequential(nn.Flatten(), Doubled(4, 8), nn.ReLU(), nn.Linear(8, 3)), "Doubled"),
    "issue_leaky_relu": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 8), Leaky(), nn.Linear(8, 3)), "Leaky"),
    "linear": (lambda: _mlp(_subclass(nn.Linear)(8, 8)), "MyLinear"),
    "relu": (lambda: _mlp(_subclass(nn.ReLU)()), "MyReLU"),
    "identity": (lambda: _mlp(_subclass(nn.Identity)()), "MyIdentity"),
    "flatten": (lambda: nn.Sequential(_subclass(nn.Flatten)(), nn.Linear(4, 3)), "MyFlatten"),
    "batchnorm1d": (lambda: _mlp(_subclass(nn.BatchNorm1d)(8).eval()), "MyBatchNorm1d"),
    "batchnorm2d": (lambda: nn.Sequential(nn.Conv2d(1, 2, 2), _subclass(nn.BatchNorm2d)(2).eval(), nn.Flatten(),
                                          nn.Linear(2, 3)), "MyBatchNorm2d"),
    "conv2d": (lambda: nn.Sequential(_subclass(nn.Conv2d)(1, 2, 2), nn.Flatten(), nn.Linear(2, 3)), "MyConv2d"),
    "conv2d_conv_forward": (lambda: nn.Sequential(WeightStandardised(1, 2, 2), nn.Flatten(), nn.Linear(2, 3)),
                            "WeightStandardised"),
    "normalize": (lambda: nn.Sequential(_subclass(gls.nn.Normalize)(0.5, 0.25), nn.Flatten(), nn.Linear(4, 3)),
                  "MyNormalize"),
    "nested_sequential": (lambda: _mlp(_subclass(nn.Sequential)(nn.Linear(8, 8))), "MySequential"),
    "the_model": (lambda: _subclass(nn.Sequential)(nn.Flatten(), nn.Linear(4, 3)), "MySequential"),
    "forward_attribute": (lambda: _mlp(_own_forward_attribute()), "Linear"),
    "forward_hook": (lambda: _mlp(_hooked()), "Linear"),
    "weight_norm": (lambda: _mlp(_weight_normed()), "ParametrizedLinear"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_subclasses_that_compute_something_else_are_refused(case):
    build, name = CASES[case]
    model = build()
    x = torch.rand(2, 1, 2, 2) if case.startswith(("batchnorm2d", "conv2d")) else torch.rand(2, 4)
    model(x)  # a valid network for torch
    with pytest.raises(ValueError, match=rf"\({name}\).* is a \w+ that (redefines|has forward hooks).*supported: "):
        gls.compute_bounds(model, x, 0.01, method="deeppoly")


def test_the_issues_doubled_linear_was_unsound_and_is_now_refused():
    """Bounded as a plain Linear, 2 W x + 2 b had lower bounds above its true value at the centre."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), Doubled(4, 8), nn.ReLU(), nn.Linear(8, 3))
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    plain.load_state_dict(model.state_dict())
    x = torch.rand(16, 4)
    lower = gls.compute_bounds(plain, x, 0.01, method="deeppoly").lower[0]  # what gls computed for Doubled
    assert (lower > model(x) + 1e-4).any()
    with pytest.raises(ValueError, match=r"layer 1 \(Doubled\) is a Linear that redefines forward"):
        gls.compute_bounds(model, x, 0.01, method="deeppoly")


class Tagged(nn.Linear):  # a subclass that keeps the layer's computation
    def __init__(self, *args, tag="", **kwargs):
        super().__init__(*args, **kwargs)
        self.tag = tag

    def describe(self):
        return f"{self.tag}: {self.in_features} -> {self.out_features}"


class TaggedConv(nn.Conv2d):
    def extra_repr(self):
        return "tagged " + super().extra_repr()


@pytest.mark.parametrize("method", ["ibp", "hbox", "crown-ibp", "deeppoly"])
def test_plain_layers_and_subclasses_that_keep_forward_are_accepted(method):
    torch.manual_seed(1)

    def model(linear=nn.Linear, conv=nn.Conv2d):
        torch.manual_seed(1)
        return nn.Sequential(gls.nn.Normalize(0.5, 0.25), conv(1, 2, 2), nn.BatchNorm2d(2), nn.ReLU(), nn.Identity(),
                             nn.Flatten(), nn.Sequential(linear(18, 6), nn.BatchNorm1d(6)), nn.ReLU(),
                             nn.Linear(6, 3)).eval()

    x = torch.rand(3, 1, 4, 4)
    plain = gls.compute_bounds(model(), x, 0.05, method=method, bound="both")
    kept = gls.compute_bounds(model(Tagged, TaggedConv), x, 0.05, method=method, bound="both")
    torch.testing.assert_close(kept.lower, plain.lower)
    torch.testing.assert_close(kept.upper, plain.upper)
    assert (plain.lower[0] <= model()(x) + 1e-5).all()


def test_a_string_eps_is_refused():
    model = nn.Sequential(nn.Linear(4, 3))
    x = torch.rand(2, 4)
    for eps in ("0.1", True, None, [0.1]):
        for sound in (False, True):
            with pytest.raises(TypeError, match="eps must be a float or a \\(B,\\) tensor"):
                gls.compute_bounds(model, x, eps, method="ibp", sound=sound)
    with pytest.raises(TypeError, match="eps must be a real tensor"):
        gls.compute_bounds(model, x, torch.tensor([True, False]), method="ibp")
    with pytest.raises(TypeError, match="domain must be None or a pair"):
        gls.compute_bounds(model, x, 0.1, method="ibp", domain=("0", "1"))


@pytest.mark.parametrize("std", [float("inf"), 0.0, -0.5, float("nan"), [0.5, float("inf")]])
def test_normalize_std_must_be_finite_and_positive(std):
    with pytest.raises(ValueError, match="Normalize: std must be positive and finite"):
        gls.nn.Normalize(0.5, std)


def test_noise_ops_refuse_half_precision_weights():
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=rf"perturb: theta must be float32 or float64.*{dtype}"):
            noise.perturb(torch.zeros(5, dtype=dtype), 0.1, 1, 2)
        with pytest.raises(TypeError, match="noise_weighted_sum: weights must be float32 or float64"):
            noise.noise_weighted_sum(torch.ones(2, dtype=dtype), 0.1, 1, 5)
        with pytest.raises(TypeError, match="noise_sigma_weighted_sum: weights must be float32 or float64"):
            noise.noise_sigma_weighted_sum(torch.ones(2, dtype=dtype), 0.1, 1, 5)


@pytest.mark.parametrize("sigma", [float("inf"), float("nan"), -1.0, torch.tensor([0.1, float("inf"), 0.1])])
def test_non_finite_sigma_is_refused(sigma):
    with pytest.raises(ValueError, match="sigma must be finite and non-negative"):
        noise.perturb(torch.zeros(3), sigma, 1, 2)
    with pytest.raises(ValueError, match="sigma must be finite and non-negative"):
        noise.noise_weighted_sum(torch.ones(2), sigma, 1, 3)
    with pytest.raises(ValueError, match="PGPE needs a finite sigma > 0"):
        PGPE(torch.zeros(3), sigma=sigma, lr=0.1, population=4, seed=0)
    if not isinstance(sigma, torch.Tensor):
        with pytest.raises(ValueError, match="RGS needs a finite sigma >= 0"):
            RGS(torch.zeros(3), sigma=sigma, samples=2, seed=0)


def test_sigma_must_be_a_number():
    with pytest.raises(TypeError, match="sigma must be a float or a tensor, got str"):
        noise.perturb(torch.zeros(3), "0.1", 1, 2)
    with pytest.raises(ValueError, match="RGS needs a finite sigma >= 0, got '0.1'"):
        RGS(torch.zeros(3), sigma="0.1", samples=2, seed=0)
