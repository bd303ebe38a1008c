"""What the bound-op tests share (test_backsub_linear_relu, test_concretize, test_ibp_affine,
test_backsub_conv_relu, test_cpu_gemm): tolerances, random relaxations, gradients of an op against the
reference, and results per torch thread count."""
import torch

from gls.reference import bound_ops as ref


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


def relaxation(members, B, n, dtype, device):
    """ReLU lines of random pre-activation bounds (all cases: active, inactive, unstable)."""
    a, b = torch.randn(members, B, n, dtype=dtype), torch.randn(members, B, n, dtype=dtype)
    return [t.to(device) for t in ref.relu_relax(torch.minimum(a, b), torch.maximum(a, b), "deeppoly")]


def assert_all_close(got, want, dtype):
    for g, w in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g, w, **tol(dtype))


def grads(fn, args):
    """Gradients of a random projection of fn(*args) w.r.t. its tensor arguments (zeros where unused)."""
    leaves = [a for a in args if isinstance(a, torch.Tensor)]
    out = fn(*args)
    out = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator(device=out[0].device).manual_seed(1)
    loss = sum((o * torch.randn(o.shape, dtype=o.dtype, device=o.device, generator=gen)).sum() for o in out)
    got = torch.autograd.grad(loss, leaves, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(leaves, got)]


def leaf_args(args):
    return [a.detach().clone().requires_grad_(True) if isinstance(a, torch.Tensor) else a for a in args]


def per_thread_count(fn, counts=(1, 2)):
    """[fn() run with n torch threads for n in counts], the thread count restored afterwards: the CPU
    kernels promise the same bits on every count."""
    before, results = torch.get_num_threads(), []
    try:
        for n in counts:
            torch.set_num_threads(n)
            results.append(fn())
    finally:
        torch.set_num_threads(before)
    return results
