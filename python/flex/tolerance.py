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
    """max |out - ref| / max |ref|, in float64; inf when shapes differ or ``out`` is not finite
    where ``ref`` is (positions where both are the same infinity, e.g. lse -inf, count as equal)."""
    if out.shape != ref.shape:
        return float("inf")
    out64, ref64 = out.detach().to(torch.float64), ref.detach().to(ref.device, torch.float64)
    out64 = out64.to(ref64.device)
    same_inf = torch.isinf(ref64) & (out64 == ref64)
    if not bool(torch.isfinite(out64[~same_inf]).all()):
        return float("inf")
    diff = (out64 - ref64).masked_fill(same_inf, 0.0).abs()
    scale = ref64.masked_fill(torch.isinf(ref64), 0.0).abs().max() if ref64.numel() else ref64.new_zeros(())
    if diff.numel() == 0:
        return 0.0
    return (diff.max() / scale.clamp_min(1e-30)).item()
