"""What the bound ops' kernels share (a helper, not an op): where the Triton kernels may run, tile sizes,
tl.dot precision, their kernel guard, and the relaxation method codes (imports no triton).

Tile sizes are a fixed choice keyed on the interpreter (no autotuning there: its timings mean
nothing, and small tiles keep it fast); on a GPU they are sensible defaults for fp32 tiles.
"""
import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"  # triton.jit reads it at decoration, so do we

# tl.dot input precision. "ieee" makes fp32 products match the PyTorch reference tightly; on a GPU set
# GLS_TRITON_DOT_PRECISION=tf32 (or assign gls_kernels.common.DOT_PRECISION) to trade accuracy for speed
# deliberately. Read at every launch.
DOT_PRECISIONS = ("ieee", "tf32", "tf32x3")
DOT_PRECISION = os.environ.get("GLS_TRITON_DOT_PRECISION", "ieee")

# Elementwise block and 2-D tiles (tl.dot needs every tile dimension >= 16).
ELEMENTWISE_BLOCK = 128 if INTERPRET else 1024
MATMUL_TILES = dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=32) if INTERPRET else dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32)
ROW_REDUCE_TILES = dict(BLOCK_M=32, BLOCK_N=32) if INTERPRET else dict(BLOCK_M=32, BLOCK_N=128)
LAUNCH = dict(num_warps=4) if INTERPRET else dict(num_warps=4, num_stages=3)


# Relaxation method -> integer code, shared with csrc/include/gls/relax.h: 0, 1 the box, 2, 3 the triangle.
# The one Python definition: gls.reference.bound_ops and gls/meta/relu_relax.py use it too.
RELAX_METHODS = {"ibp": 0, "hbox": 1, "crown-ibp": 2, "deeppoly": 3, "crown": 3}


def relax_code(method: str) -> int:
    """Method name -> its code; ValueError naming the known methods otherwise."""
    try:
        return RELAX_METHODS[method]
    except (KeyError, TypeError):
        raise ValueError(f"unknown relaxation method {method!r}; expected one of {sorted(RELAX_METHODS)}") from None


def dot_precision() -> str:
    """The tl.dot input precision to launch with (validated, so a typo fails loudly)."""
    if DOT_PRECISION not in DOT_PRECISIONS:
        raise ValueError(f"gls_kernels: DOT_PRECISION={DOT_PRECISION!r} is not one of {DOT_PRECISIONS}")
    return DOT_PRECISION


def check_inputs(op: str, tensors: dict, ranks: dict) -> None:
    """Kernel guard shared by the bound ops: dtype, rank and device (None entries are skipped; the schema checks types).

    float32 only: the kernels accumulate in fp32 and tl.dot has no fp64 path worth using; float64
    work (e.g. gradcheck) runs on the reference backend.
    """
    device = None
    for name, t in tensors.items():
        if t is None:
            continue
        if t.dtype != torch.float32:
            raise TypeError(
                f"gls_triton::{op}: {name} has dtype {t.dtype}; the Triton kernels run in torch.float32 "
                "(use the reference backend for other dtypes)"
            )
        if name in ranks and t.dim() != ranks[name]:
            raise ValueError(f"gls_triton::{op}: {name} must have {ranks[name]} dimensions, got shape {tuple(t.shape)}")
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"gls_triton::{op}: {name} is on {t.device}, expected {device} like the other inputs")
    if device is not None and device.type != "cuda" and not INTERPRET:
        raise ValueError(f"gls_triton::{op}: Triton kernels need CUDA tensors (or TRITON_INTERPRET=1), got tensors on {device}")


def population_stride(t: torch.Tensor) -> int:
    """Stride of the leading population axis of a contiguous tensor; 0 when it is shared (size 1)."""
    return 0 if t.shape[0] == 1 else t.stride(0)
