"""flash-attn over the resident prefix of the ring, used when flash_attn is importable."""
import torch

from ._resident_prefix import SLICES_RESIDENT_PREFIX, supports  # noqa: F401

DEVICES = {"cuda"}


def available():
    try:
        import flash_attn  # noqa: F401
    except ImportError as err:
        return False, f"flash_attn is not importable ({err})"
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    return True, "flash_attn.flash_attn_func"


def ring_attention(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame, chunk_frames,
                   scale, key_freqs_t, return_lse, resident_tokens):
    from flash_attn import flash_attn_func

    # [B, S, H, D] is flash-attn's own layout; softmax ignores key order, so no gather.
    return flash_attn_func(q, k_cache[:, :resident_tokens], v_cache[:, :resident_tokens], softmax_scale=scale)
