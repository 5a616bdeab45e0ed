"""torch SDPA over the resident prefix of the ring: exact when no mask is needed."""
import torch.nn.functional as F

from ._resident_prefix import SLICES_RESIDENT_PREFIX, supports  # noqa: F401

DEVICES = {"cpu", "cuda"}


def available():
    return True, "torch.nn.functional.scaled_dot_product_attention"


def ring_attention(q, k_cache, v_cache, slot_frame, tokens_per_frame, q_first_frame, chunk_frames,
                   scale, key_freqs_t, return_lse, resident_tokens):
    # Softmax ignores key order, so the resident prefix of a ring needs no gather.
    k = k_cache[:, :resident_tokens].transpose(1, 2)
    v = v_cache[:, :resident_tokens].transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, scale=scale)
    return out.transpose(1, 2)
