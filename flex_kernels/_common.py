"""Launch helpers shared by the kernel families.

Under ``TRITON_INTERPRET=1`` (the CPU interpreter) every kernel runs with one fixed launch
configuration; on a GPU the same kernels are wrapped in ``triton.autotune``. The flag is read
once, when ``flex_kernels`` is imported, which is also when ``triton.jit`` decides whether a
kernel is interpreted, so both always agree.
"""
from __future__ import annotations

import os

import torch
import triton
from torch.library import custom_op, triton_op

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Dtypes the kernels compute for: loads are cast to float32, stores round once.
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def autotune(configs, key, fixed):
    """``triton.autotune(configs, key)`` on a GPU; under the interpreter the kernel is left as is.

    ``fixed`` is the interpreter's launch configuration: callers pass ``launch_meta(fixed)``
    as keyword arguments, which is empty on a GPU (the autotuner supplies the meta-parameters).
    """
    def wrap(kernel):
        if INTERPRET:
            return kernel
        return triton.autotune(configs=configs, key=key)(kernel)

    return wrap


def launch_meta(fixed: dict) -> dict:
    """Meta-parameters to pass at launch: ``fixed`` under the interpreter, none on a GPU."""
    return dict(fixed) if INTERPRET else {}


def register_op(name: str, mutates_args, fake):
    """Register ``fn`` as the operator ``name`` (e.g. "flex_triton::rope3d").

    On a GPU it is a ``torch.library.triton_op``: torch.compile traces into it and sees the
    Triton kernels. Under the interpreter, triton_op cannot trace (``wrap_triton`` hands back
    the raw interpreted kernel, which needs real data pointers), so the op is an opaque
    ``custom_op`` with the fake (shape-only) implementation ``fake``: eager calls, opcheck and
    torch.compile still work there, the kernels just stay a black box to the compiler.
    """
    def wrap(fn):
        if INTERPRET:
            op = custom_op(name, fn, mutates_args=mutates_args)
            op.register_fake(fake)
            return op
        return triton_op(name, fn, mutates_args=mutates_args)

    return wrap


def next_pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, triton.next_power_of_2(max(int(n), 1)))


def check_float(name: str, x: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16 for the Triton kernels, got {x.dtype}")


def check_device(name: str, x: torch.Tensor, device: torch.device) -> None:
    if x.device != device:
        raise ValueError(f"{name} must be on {device}, got {x.device}")
    if not INTERPRET and device.type != "cuda":
        raise ValueError(
            f"{name} is on {device}; the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 set "
            "before triton is imported, to run them on the CPU)"
        )
