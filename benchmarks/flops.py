"""Model FLOPs of a stream, to put achieved FLOP/s next to the matmul roofline.

Counted: the matmuls of the DiT (every Linear / patch-embedding conv: 2 x tokens x in x out; self-
attention: 4 x queries x resident keys x dim for QK^T and PV; cross-attention against the
text: 4 x queries x text_len x dim), per pass. The prompt's cross-attention K/V and the text
embedding are computed once per stream (the FLEX pipeline's work); a path that recomputes
them every pass does more work than counted, so its FLOP/s reads as what it achieves on the
useful work. Norms, RoPE, softmax and elementwise ops are not counted (memory-bound, small).
"""
from __future__ import annotations

from flex.models.config import WanConfig


def pass_flops(cfg: WanConfig, tokens_per_frame: int, frames: int, resident_frames: int) -> float:
    """FLOPs of one pass over a chunk of ``frames`` latent frames whose queries see
    ``resident_frames`` cached frames (the chunk's own included)."""
    t = tokens_per_frame * frames
    keys = tokens_per_frame * resident_frames
    d = cfg.dim
    patch = 2 * t * cfg.in_dim * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2] * d
    per_block = (2 * t * d * d * 4        # self-attention q, k, v, o
                 + 4 * t * keys * d       # QK^T and PV over the resident keys
                 + 2 * t * d * d * 2      # cross-attention q and o
                 + 4 * t * cfg.text_len * d  # cross-attention QK^T and PV
                 + 2 * t * d * cfg.ffn_dim * 2)  # FFN up and down
    head = 2 * t * d * cfg.out_dim * cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2]
    return patch + cfg.num_layers * per_block + head


def stream_flops(cfg: WanConfig, tokens_per_frame: int, num_frames: int, chunk_frames: int, sink_frames: int,
                 window_frames: int, passes_per_chunk: int) -> float:
    """FLOPs of a whole stream: ``passes_per_chunk`` passes per chunk (denoising steps + the
    clean context pass), each seeing the sink, the window and the chunk itself."""
    once = 2 * cfg.text_len * (cfg.text_dim * cfg.dim + cfg.dim * cfg.dim)  # text embedding
    once += cfg.num_layers * 2 * cfg.text_len * cfg.dim * cfg.dim * 2  # every layer's text K and V
    total = once
    for first in range(0, num_frames, chunk_frames):
        n = min(chunk_frames, num_frames - first)
        resident = min(first + n, sink_frames + window_frames)
        total += passes_per_chunk * pass_flops(cfg, tokens_per_frame, n, resident)
    return total
