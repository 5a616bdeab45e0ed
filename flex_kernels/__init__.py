"""Triton kernels of FLEX (GPU, or CPU through TRITON_INTERPRET=1).

    rope3d                 Wan 3D RoPE (interleaved pairs, per-axis cos/sin tables)
    norm_rope_cache_write  qk-RMSNorm + 3D RoPE + k/v written into ring-cache slots, one launch
    ring_attention         sink + window attention over a ring cache, optional rotate-on-load

Each is also registered as a torch.library triton_op (``torch.ops.flex_triton.*``), so
torch.compile traces through it. Set TRITON_INTERPRET=1 before importing triton to run on the CPU.

flex.ops validates the public input rules; these entry points check only what their kernels
need (dtypes, shapes, strides, block limits), on the host, and mask device-side indices
(ring slots, frame offsets) so that out-of-range values never touch memory outside a tensor.
"""
from ._common import INTERPRET, SUPPORTED_DTYPES
from .attention import ring_attention
from .rope import norm_rope_cache_write, rope3d

__all__ = ["INTERPRET", "SUPPORTED_DTYPES", "norm_rope_cache_write", "ring_attention", "rope3d"]
