"""backsub_conv_relu: input check, fake kernel and closed-form backward, shared by every namespace.

Also the fake of the helper op gls::backsub_conv_relu_backward (csrc only), which the backward calls
where gls._C has it for the device.

Forward (gls.reference.bound_ops.backsub_conv_relu): g = conv_transpose(lam, W) on each window,
A = a_l where g >= 0 else a_u (likewise C from c_l, c_u; both 0 outside the map), lam' = g A,
bias = sum g C + lam . b. With upstream gradients G (of lam') and h (of bias): dg = G A + h C;
dlam = conv(dg, W) + h b; dW = sum over rows of lam (x) dg; db = h sum_window lam; the line
gradients G g and h g go to a_l, c_l where g >= 0 and to a_u, c_u elsewhere, summed over the rows of
each (member, sample), and over the population where an input is shared (P = 1). This is exactly the
reference's autograd (torch.where routes the whole gradient to the selected branch). The fused
backward reads g from the forward's third output, the window it keeps when called with keep_window
(gls.ops.backsub_conv_relu asks for it whenever autograd records the call): keeping g costs one more
window per row in memory and saves recomputing the transposed convolution, a third of the backward's
work. Without a kept window, under create_graph (double backward), or where no fused kernel exists
for the device, the reference's autograd runs instead. The window output carries no gradient. The
fused backward is told what is needed: no upstream gradient of lam' (a concretisation such as the
first layer's bound) is passed as an empty tensor and never read, and d_lam (constant start rows) and
the line gradients (the input box) are skipped when no input asks for them.
"""
from __future__ import annotations

import torch

from gls import native
from gls.meta import fused_kernel
from gls.meta._population import reduce_members
from gls.reference import bound_ops as ref


def check(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation) -> tuple[int, ...]:
    """The op's contract (shapes); returns (P, B, R, C_in, h', w') of the output windows."""
    op = "backsub_conv_relu"
    if lam.dim() != 6 or W.dim() != 5:
        raise ValueError(f"{op}: lam must be 6-D (P,B,R,C_out,h,w) and W 5-D, got {tuple(lam.shape)} and {tuple(W.shape)}")
    if len(stride) != 2 or len(dilation) != 2 or min(*stride, *dilation) < 1:
        raise ValueError(f"{op}: stride and dilation must be 2 positive integers, got {list(stride)} and {list(dilation)}")
    P, B, R, c_out, h, w = lam.shape
    if W.shape[0] not in (1, P) or W.shape[1] != c_out:
        raise ValueError(f"{op}: W must have shape (1 or P={P}, C_out={c_out}, C_in, kh, kw), got {tuple(W.shape)}")
    c_in, kh, kw = W.shape[2:]
    if b is not None and (b.dim() != 2 or b.shape[0] not in (1, P) or b.shape[1] != c_out):
        raise ValueError(f"{op}: b must have shape (1 or P={P}, C_out={c_out}), got {tuple(b.shape)}")
    for name, t in (("a_l", a_l), ("c_l", c_l), ("a_u", a_u), ("c_u", c_u)):
        if t.dim() != 5 or t.shape[0] not in (1, P) or tuple(t.shape[1:3]) != (B, c_in) or t.shape != a_l.shape:
            raise ValueError(f"{op}: {name} must have shape (1 or P={P}, B={B}, C_in={c_in}, H, W) like a_l, "
                             f"got {tuple(t.shape)}")
    if origin.dtype != torch.int64 or tuple(origin.shape) != (P, B, R, 2):
        raise ValueError(f"{op}: origin must be int64 of shape (P={P}, B={B}, R={R}, 2), got {origin.dtype} "
                         f"{tuple(origin.shape)}")
    return P, B, R, c_in, (h - 1) * stride[0] + dilation[0] * (kh - 1) + 1, (w - 1) * stride[1] + dilation[1] * (kw - 1) + 1


def fake(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation, keep_window=False):
    P, B, R, c_in, h2, w2 = check(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation)
    out = lam.new_empty((P, B, R, c_in, h2, w2))
    return out, lam.new_empty((P, B, R)), torch.empty_like(out) if keep_window else lam.new_empty((0,))


def backward_fake(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation, window, grad_lam, grad_bias, lam_grad,
                  line_grads):
    P, B = lam.shape[:2]
    maps = (P, B, *a_l.shape[2:]) if line_grads else (0,)
    d_b = lam.new_empty((P, W.shape[1])) if b is not None else lam.new_empty((0,))
    return (torch.empty_like(lam) if lam_grad else lam.new_empty((0,)), lam.new_empty((P, *W.shape[1:])), d_b,
            *(lam.new_empty(maps) for _ in range(4)))


def setup_context(ctx, inputs, output):
    lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation, *_ = inputs
    ctx.save_for_backward(lam, W, b, a_l, c_l, a_u, c_u, origin, output[2])
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the window, nor for an unused lam'
    ctx.geometry = (stride, dilation)


def _reference_grads(ctx, inputs, g_lam, g_bias):
    need = ctx.needs_input_grad
    args = [t.detach().requires_grad_(need[i]) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
            for i, t in enumerate(inputs)]
    leaves = [i for i, t in enumerate(args) if isinstance(t, torch.Tensor) and t.requires_grad]
    with torch.enable_grad():
        out = ref.backsub_conv_relu(*args, *ctx.geometry)[:2]
    got = torch.autograd.grad(out, [args[i] for i in leaves], (g_lam, g_bias),
                              create_graph=torch.is_grad_enabled(), allow_unused=True)
    grads = [None] * 11
    for i, g in zip(leaves, got):
        grads[i] = torch.zeros_like(args[i]) if g is None else g
    return tuple(grads)


def _backward_in(namespace: str):
    def backward(ctx, g_lam, g_bias, _g_window):
        *inputs, window = ctx.saved_tensors
        lam, W, b, a_l, c_l, a_u, c_u, origin = inputs
        need = ctx.needs_input_grad
        g_bias = lam.new_zeros(lam.shape[:3]) if g_bias is None else g_bias
        fused = fused_kernel("backsub_conv_relu_backward", namespace, lam.device)
        if torch.is_grad_enabled() or window.numel() == 0 or fused is None:
            if g_lam is None:  # lam' unused (a concretisation): zeros of the shape the geometry gives
                g_lam = lam.new_zeros(fake(lam, W, b, a_l, c_l, a_u, c_u, origin, *ctx.geometry)[0].shape)
            return _reference_grads(ctx, inputs, g_lam, g_bias)
        g_lam = lam.new_empty((0,)) if g_lam is None else g_lam.contiguous()  # empty: no gradient, nothing to read
        d_lam, d_W, d_b, *d_lines = fused(lam, W, b, a_l, c_l, a_u, c_u, origin, *ctx.geometry, window, g_lam,
                                          g_bias.contiguous(), need[0], any(need[3:7]))
        grads = [d_lam if need[0] else None, reduce_members(d_W, W) if need[1] else None,
                 reduce_members(d_b, b) if need[2] and b is not None else None]
        grads += [reduce_members(d, like) if need[i] else None for i, (d, like) in
                  enumerate(zip(d_lines, (a_l, c_l, a_u, c_u)), start=3)]
        return tuple(grads) + (None, None, None, None)

    return backward


def register(namespace: str) -> None:
    torch.library.register_fake(f"{namespace}::backsub_conv_relu")(fake)
    torch.library.register_autograd(f"{namespace}::backsub_conv_relu", _backward_in(namespace),
                                    setup_context=setup_context)
    if namespace in native.NAMESPACES and native.has_op("backsub_conv_relu_backward", namespace):
        torch.library.register_fake(f"{namespace}::backsub_conv_relu_backward")(backward_fake)
