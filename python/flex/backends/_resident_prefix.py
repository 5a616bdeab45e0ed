"""What the backends that attend over the resident ring prefix (sdpa, flash) accept."""

SLICES_RESIDENT_PREFIX = True  # they attend k_cache[:, :resident_tokens]: the call depends on that int


def supports(call) -> bool:
    """only the unmasked ring attention over an exact resident prefix: chunk_frames=0, no
    key_freqs_t, resident_tokens given, no lse."""
    return (call.op == "ring_attention" and call.resident_prefix and not call.block_causal
            and not call.rotate_on_load and not call.return_lse)
