"""CUDA kernels of flex._C (torch.ops.flex.*) on CUDA tensors: the fused RoPE ops.

Attention on CUDA goes through the triton, sdpa or flash backends.
"""
import torch

from flex import _extension

from .cpp import norm_rope_cache_write, rope3d  # noqa: F401  (same ops; torch dispatches on device)

DEVICES = {"cuda"}


def available():
    if not _extension.AVAILABLE:
        return False, _extension.unavailable_reason()
    if not _extension.has_cuda_kernels():
        return False, "flex._C was built without its CUDA kernels (no nvcc or a CPU-only torch at build time)"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, "torch.ops.flex (CUDA)"
