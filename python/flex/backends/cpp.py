"""C++ CPU kernels of flex._C (torch.ops.flex.*) on CPU tensors."""
import torch

from flex import _extension

DEVICES = {"cpu"}


def available():
    return (True, "torch.ops.flex (C++)") if _extension.AVAILABLE else (False, _extension.unavailable_reason())


def supports(call) -> bool:
    """float32/float16/bfloat16 inputs (float64 too for the RoPE ops, not for ring_attention)."""
    return not (call.op == "ring_attention" and call.dtype == torch.float64)


def rope3d(x, freqs_t, freqs_h, freqs_w, grid_h, grid_w, frame_offset):
    return torch.ops.flex.rope3d(x, freqs_t.float(), freqs_h.float(), freqs_w.float(), grid_h, grid_w, frame_offset)


def norm_rope_cache_write(q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t, freqs_h, freqs_w, grid_h, grid_w,
                          frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal):
    return torch.ops.flex.norm_rope_cache_write(
        q, k, v, norm_q_weight, norm_k_weight, eps, freqs_t.float(), freqs_h.float(), freqs_w.float(), grid_h,
        grid_w, frame_offset, k_cache, v_cache, frame_slots, rotate_k_temporal)


def ring_attention(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame, chunk_frames,
                   scale, key_freqs_t, return_lse, resident_tokens):
    out, lse = torch.ops.flex.ring_attention(
        q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame, chunk_frames, scale,
        None if key_freqs_t is None else key_freqs_t.float(), return_lse)
    return (out, lse) if return_lse else out
