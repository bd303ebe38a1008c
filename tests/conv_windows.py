"""Inputs of gls backsub_conv_relu for the kernel tests: windowed rows through a convolution.

Odd geometries (stride 1 and 2, dilation 2, non-square kernels), windows partly outside the map,
P = 1 and populations with shared (P = 1) filters, biases or lines, b None, one-hot rows (many
transposed-convolution entries exactly 0, so the g >= 0 selection matters) and empty row sets.
"""
import torch

# P, Pw (W and b members), Pr (line members), B, R, C_out, C_in, h, w, (kh, kw), H, W, stride, dilation, bias, one_hot
CASES = [
    (1, 1, 1, 1, 1, 1, 1, 1, 1, (1, 1), 3, 3, (1, 1), (1, 1), False, False),
    (1, 1, 1, 2, 3, 4, 3, 2, 2, (3, 3), 6, 7, (1, 1), (1, 1), True, False),
    (3, 1, 3, 2, 3, 5, 1, 2, 3, (3, 2), 9, 8, (2, 2), (1, 1), True, False),
    (3, 3, 1, 2, 2, 4, 3, 3, 2, (3, 3), 11, 10, (1, 2), (2, 2), True, False),
    (2, 2, 2, 1, 4, 3, 2, 2, 2, (2, 3), 7, 7, (2, 1), (1, 2), False, False),
    (2, 1, 2, 2, 3, 6, 5, 1, 1, (3, 3), 5, 5, (1, 1), (1, 1), True, True),
    (2, 2, 2, 1, 2, 40, 37, 2, 2, (2, 2), 5, 5, (2, 2), (1, 1), True, False),
    (1, 1, 1, 1, 2, 2, 2, 4, 4, (3, 3), 12, 12, (2, 2), (2, 2), True, False),
    (2, 2, 2, 2, 0, 3, 2, 2, 2, (2, 2), 4, 4, (1, 1), (1, 1), True, False),
]


def case_id(c) -> str:
    P, Pw, Pr, B, R, c_out, c_in, h, w, k, H, W, s, d, bias, one_hot = c
    return (f"P{P}_Pw{Pw}_Pr{Pr}_B{B}_R{R}_co{c_out}_ci{c_in}_win{h}x{w}_k{k[0]}x{k[1]}_map{H}x{W}"
            f"_s{s[0]}{s[1]}_d{d[0]}{d[1]}_b{int(bias)}{'_onehot' if one_hot else ''}")


def conv_args(case, dtype=torch.float32, device="cpu"):
    """(lam, W, b, a_l, c_l, a_u, c_u, origin, stride, dilation) for one CASES entry."""
    P, Pw, Pr, B, R, c_out, c_in, h, w, (kh, kw), H, W, stride, dilation, bias, one_hot = case
    h2 = (h - 1) * stride[0] + dilation[0] * (kh - 1) + 1
    w2 = (w - 1) * stride[1] + dilation[1] * (kw - 1) + 1
    lam = torch.randn(P, B, R, c_out, h, w, dtype=dtype)
    if one_hot:
        keep = torch.rand_like(lam).flatten(3).argmax(-1, keepdim=True)
        lam = torch.zeros_like(lam).flatten(3).scatter(-1, keep, 1.0).view_as(lam)
    Wt = torch.randn(Pw, c_out, c_in, kh, kw, dtype=dtype) / (c_out * kh * kw) ** 0.5
    b = torch.randn(Pw, c_out, dtype=dtype) if bias else None
    lines = [torch.randn(Pr, B, c_in, H, W, dtype=dtype) for _ in range(4)]  # general lines: every path counts
    origin = torch.stack([torch.randint(1 - h2, H, (P, B, R)), torch.randint(1 - w2, W, (P, B, R))], -1)
    tensors = [t if t is None else t.to(device) for t in (lam, Wt, b, *lines, origin)]
    return (*tensors, list(stride), list(dilation))
