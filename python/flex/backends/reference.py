"""Reference backend: the float64 PyTorch functions of flex.reference, on any device."""
from flex import reference

DEVICES = {"cpu", "cuda"}


def available():
    return True, "always"


rope3d = reference.rope3d
norm_rope_cache_write = reference.norm_rope_cache_write


def ring_attention(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame, chunk_frames,
                   scale, key_freqs_t, return_lse, resident_tokens):
    return reference.ring_attention(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame,
                                    chunk_frames, scale, key_freqs_t, return_lse)
