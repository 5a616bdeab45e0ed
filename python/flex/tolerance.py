"""The error bound every kernel is held to against the float64 references of flex.reference.

One rule for the self-test, the first-use canaries and the op tests: the largest absolute
difference, relative to the reference's largest magnitude, must stay within the bound of the
kernel's dtype (fp32 1e-5, fp16 2e-3, bf16 1e-2; the kernels compute in fp32 and round once).
"""
from __future__ import annotations

import torch

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float64: 1e-12}


def tolerance(dtype: torch.dtype) -> float:
    """The relative error bound of a kernel computing in ``dtype``."""
    if dtype not in TOLERANCE:
        raise ValueError(f"dtype must be one of {sorted(map(str, TOLERANCE))}, got {dtype}")
    return TOLERANCE[dtype]


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| (finite entries of ref), in float64; inf when the shapes differ
    or ``out`` is not finite where ``ref`` is (equal infinities, e.g. lse -inf, count as equal)."""
    if out.shape != ref.shape:
        return float("inf")
    if out.numel() == 0:
        return 0.0
    ref64 = ref.detach().to(torch.float64)
    out64 = out.detach().to(ref64.device, torch.float64)
    diff = torch.where(out64 == ref64, 0.0, (out64 - ref64).abs())  # inf - inf would be nan
    worst = diff.max()
    if not bool(torch.isfinite(worst)):
        return float("inf")
    scale = ref64.abs().nan_to_num(posinf=0.0).max().clamp_min(1e-30)
    return (worst / scale).item()
