"""Loader of the compiled extension ``flex._C`` and fake (meta) kernels of its operators.

``flex._C`` registers ``torch.ops.flex.*`` (C++ CPU kernels, plus CUDA kernels when it was built
with CUDA). Importing this module never fails: ``AVAILABLE`` says whether the extension loaded
and ``IMPORT_ERROR`` keeps the reason when it did not. The fake kernels below give the output
shapes to torch.compile / FakeTensor tracing, and reject tensor arguments on different devices
(a call mixing meta and CPU tensors is dispatched to them).

Operators:
    flex::rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset) -> Tensor
    flex::norm_rope_cache_write(q, k, v, norm_q_weight?, norm_k_weight?, eps, freqs_t, freqs_h,
        freqs_w, grid_h, grid_w, frame_offset, k_cache!, v_cache!, frame_slots,
        rotate_k_temporal) -> Tensor  (CPU and CUDA)
    flex::ring_attention(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame,
        chunk_frames, scale, key_freqs_t?, return_lse) -> (Tensor, Tensor)  (CPU)
    flex::built_with_cuda() -> bool
"""
from __future__ import annotations

import torch

AVAILABLE = False
IMPORT_ERROR: str | None = None

try:
    from flex import _C  # noqa: F401  (loading the library registers the operators)

    AVAILABLE = True
except ImportError as exc:  # not built, or built against another torch
    IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

BUILD_HINT = "build it from the repository root with `pip install --no-build-isolation -e .`"


def unavailable_reason() -> str:
    """Why flex._C cannot be used ('' when it can)."""
    if AVAILABLE:
        return ""
    return f"the compiled extension flex._C is not available ({IMPORT_ERROR}); {BUILD_HINT}"


def require() -> None:
    """Raise a RuntimeError explaining how to build flex._C when it is not loaded."""
    if not AVAILABLE:
        raise RuntimeError(unavailable_reason())


def has_cuda_kernels() -> bool:
    """True when flex._C is loaded and was compiled with its CUDA kernels."""
    return AVAILABLE and bool(torch.ops.flex.built_with_cuda())


def _check_same_device(op: str, ref_name: str, ref: torch.Tensor, **tensors) -> None:
    """Every tensor argument on ref's device, as the C++ kernels require.

    The dispatcher picks the kernel from the devices of all tensor arguments, so a call with one
    argument on the meta device (and the others on the CPU) lands here, not in the C++ checks;
    without this check it would return an uninitialised result and write no cache.
    """
    for name, t in tensors.items():
        if t is not None and t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device} "
                             f"(every tensor argument must be on {ref_name}'s device)")


def _register_fakes() -> None:
    @torch.library.register_fake("flex::rope3d")
    def _rope3d_fake(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset):
        _check_same_device("rope3d", "x", x, freqs_t=freqs_t, freqs_h=freqs_h, freqs_w=freqs_w)
        torch._check(x.dim() == 4, lambda: f"rope3d: x must be 4-D [B, T, H, D], got {tuple(x.shape)}")
        return x.new_empty(x.shape)

    @torch.library.register_fake("flex::norm_rope_cache_write")
    def _norm_rope_cache_write_fake(q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h,
                                    freqs_w, grid_h, grid_w, frame_offset, k_cache, v_cache,
                                    frame_slots, rotate_k_temporal):
        _check_same_device("norm_rope_cache_write", "q", q, k=k, v=v, norm_q_weight=norm_q_weight,
                           norm_k_weight=norm_k_weight, freqs_t=freqs_t, freqs_h=freqs_h, freqs_w=freqs_w,
                           k_cache=k_cache, v_cache=v_cache, frame_slots=frame_slots)
        torch._check(q.dim() == 4, lambda: f"norm_rope_cache_write: q must be 4-D, got {tuple(q.shape)}")
        return q.new_empty(q.shape)

    @torch.library.register_fake("flex::ring_attention")
    def _ring_attention_fake(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame,
                             chunk_frames, scale, key_freqs_t, return_lse):
        _check_same_device("ring_attention", "q", q, k_cache=k_cache, v_cache=v_cache,
                           slot_frame=slot_frame, key_freqs_t=key_freqs_t)
        torch._check(q.dim() == 4, lambda: f"ring_attention: q must be 4-D, got {tuple(q.shape)}")
        b, t, h, _ = q.shape
        out = q.new_empty(q.shape)
        lse = q.new_empty((b, h, t) if return_lse else (0,), dtype=torch.float32)
        return out, lse


if AVAILABLE:
    _register_fakes()
