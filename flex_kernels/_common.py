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


# The kernels' preconditions. flex.ops owns the input rules of the public ops and validates
# first; the kernels are also called directly (by a compiled pass that skips flex.ops), so each
# wrapper checks what its kernel itself needs to be memory safe and correct, and no more. All
# checks are host-side, on shapes and dtypes (never a device read: the kernels run inside CUDA
# graphs and torch.compile). Index values that live on the device (ring slots, frame offsets)
# are range-masked inside the kernels instead.

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Token indices inside a tile are int32 (pointer offsets are int64).
MAX_TOKENS = 2**31 - 1
INDEX_DTYPES = (torch.int32, torch.int64)
# Tables and norm weights are only read (cast to float32 on load).
TABLE_DTYPES = SUPPORTED_DTYPES + (torch.float64,)


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


def check_rows(name: str, x, device: torch.device) -> None:
    """x is a [B, T, H, D] tensor the kernels load or store: a supported float dtype, on
    ``device``, with a contiguous head dim (the kernels address elements of a row directly)."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"{name} must be a 4-D tensor [B, T, H, D]")
    check_float(name, x)
    check_device(name, x, device)
    if x.stride(-1) != 1:
        raise ValueError(f"the last dimension (head dim) of {name} must be contiguous")


def check_int64(name: str, value, minimum: int) -> None:
    """A host int the kernel takes as an int64 scalar."""
    if not isinstance(value, int) or not minimum <= value <= INT64_MAX:
        low = "-2**63" if minimum == INT64_MIN else str(minimum)
        raise ValueError(f"{name} must be an int in [{low}, 2**63), got {value!r}")


def split_index(name: str, value, device: torch.device, minimum: int):
    """(host int, None) for an int; (0, one-element int tensor) for a device index the kernel
    reads itself (no host sync)."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype not in INDEX_DTYPES:
            raise ValueError(f"a tensor {name} must hold one int32/int64 value, got {value.dtype} "
                             f"of shape {tuple(value.shape)}")
        check_device(name, value, device)
        return 0, value.reshape(1)
    check_int64(name, value, minimum)
    return int(value), None


def check_index_vector(name: str, x, device: torch.device, dtypes, numel: int) -> None:
    """A 1-D index tensor of ``numel`` entries the kernel reads (any stride)."""
    if (not isinstance(x, torch.Tensor) or x.dim() != 1 or x.dtype not in dtypes or x.numel() != numel):
        raise ValueError(f"{name} must be a 1-D {_names(dtypes)} tensor of {numel} entries, got "
                         f"{getattr(x, 'dtype', type(x).__name__)} of shape {tuple(getattr(x, 'shape', ()))}")
    check_device(name, x, device)


def check_table(name: str, f, device: torch.device, heads: int | None = None) -> None:
    """A [N, C, 2] (cos, sin) table, read in float32 (the wrappers make it contiguous); with
    ``heads``, one table per head [N, heads, C, 2] is accepted too."""
    per_head = heads is not None and isinstance(f, torch.Tensor) and f.dim() == 4 and f.shape[1] == heads
    if not isinstance(f, torch.Tensor) or not (f.dim() == 3 or per_head) or f.shape[-1] != 2 \
            or f.dtype not in TABLE_DTYPES:
        shapes = "[N, C, 2]" + (f" or [N, H={heads}, C, 2]" if heads is not None else "")
        raise ValueError(f"{name} must be a {shapes} (cos, sin) tensor of {_names(TABLE_DTYPES)}")
    check_device(name, f, device)


def _names(dtypes) -> str:
    return "/".join(str(d).replace("torch.", "") for d in dtypes)
