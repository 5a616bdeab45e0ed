"""Triton backend: the fused kernels of flex_kernels, on CUDA tensors.

With TRITON_INTERPRET=1 set before triton is imported, the same kernels run on CPU tensors
through Triton's interpreter (slow; for tests). The kernels compute in float32 and support
float32, float16 and bfloat16 inputs (bfloat16 only on a GPU: the interpreter cannot do it).
"""
from __future__ import annotations

import os

import torch

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICES = {"cuda", "cpu"} if _INTERPRET else {"cuda"}


def available():
    try:
        import triton  # noqa: F401
    except ImportError as err:
        return False, f"triton is not installed ({err})"
    if not _INTERPRET and not torch.cuda.is_available():
        return False, "no CUDA device (set TRITON_INTERPRET=1 before importing triton to run on the CPU)"
    try:
        import flex_kernels  # noqa: F401
    except ImportError as err:
        return False, f"flex_kernels cannot be imported ({err})"
    return True, "triton " + __import__("triton").__version__ + (" (interpreter)" if _INTERPRET else "")


def supports(call) -> bool:
    """float32/float16/bfloat16 inputs; ring_attention head dims up to 256."""
    if call.dtype is not None and call.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False
    if call.op == "ring_attention" and call.head_dim is not None and call.head_dim > 256:
        return False
    return True


def rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset):
    from flex_kernels import rope3d as kernel

    return kernel(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset)


def norm_rope_cache_write(q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h,
                          grid_w, frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal=True):
    from flex_kernels import norm_rope_cache_write as kernel

    return kernel(q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h, grid_w,
                  frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal)


def ring_attention(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame, chunk_frames,
                   scale, key_freqs_t, return_lse, resident_tokens):
    # resident_tokens is not needed: the kernel finds the visible slot range on the device.
    from flex_kernels import ring_attention as kernel

    return kernel(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame, chunk_frames,
                  scale, key_freqs_t, return_lse)
