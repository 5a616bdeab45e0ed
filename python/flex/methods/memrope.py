"""MemRoPE (Kim, Hu, Kuo, Beerel, arXiv 2603.12513): memory tokens that compress every evicted
key and value into a long-term and a short-term exponential moving average, keys cached
without RoPE and placed at attention time.

Paper, method sections "Memory Tokens" and "Online RoPE Indexing". Official code
(github.com/YoungRaeKimm/MemRoPE, commit b89bf5b87ca8, wan/modules/causal_model.py,
``CausalWanSelfAttention.forward``, the ``compression_method == 'ema'`` branch, and
configs/selfforcing/memrope_60s.yaml): a 12-frame cache laid out
[sink 3][long-term EMA 1][short-term EMA 1][recent 4][new chunk 3]. When a chunk would
overflow it, the oldest recent frames are evicted; their un-rotated keys (and values) are
averaged over every evicted token into one vector per head, m; on the first eviction both
memories are set to m, afterwards  M_long <- a_long m + (1 - a_long) M_long  and
M_short <- a_short m + (1 - a_short) M_short (a_long 0.01, a_short 0.1); each memory frame is
that vector at every token of a frame. RoPE is applied at attention time by the cache layout
("block-relativistic"): sink frames 0..2, the memories 3 and 4, the recent and new frames
after them, spatial planes by each token's place in its frame.

Here: the memories are two more sink slots (sink_frames = sink + 2) of the ring, the window
holds recent + chunk frames, and the "window" position policy gives exactly that layout
(sink slot f at f, window frames right after). Keys are cached with their spatial planes
rotated, so the mean is taken after undoing the spatial rotation and the memory frame is m
rotated at every token's place; the EMA is linear, so it runs on the rotated memory slots.
The first eviction (frames 5..7 at the chunk starting at frame 12) also replaces frames 3 and
4, as the official code does.
"""
from __future__ import annotations

import torch

from ..cache import ModelKVCache
from .cache_policy import (CachePolicy, evicted_frames, frame_slots_tensor, rotate_planes, slot_tokens,
                           spatial_table, temporal_planes)


class MemRoPE(CachePolicy):
    """[sink][long EMA][short EMA][recent + current chunk] with memories updated at each eviction."""

    name = "memrope"

    def __init__(self, config, params: dict):
        super().__init__(config, params)
        self.sink = config.sink_frames - 2  # the last two sink slots hold the memories
        self.alpha_long, self.alpha_short = params["alpha_long"], params["alpha_short"]
        self.initialized = False

    def memory_slots(self) -> tuple[int, int]:
        return self.sink, self.sink + 1

    def start(self, cache: ModelKVCache, rotate_on_load: bool) -> None:
        super().start(cache, rotate_on_load)
        self.initialized = False

    def before_chunk(self, cache: ModelKVCache, first_frame: int, n_frames: int, place: tuple) -> None:
        gone = evicted_frames(first_frame, n_frames, cache.sink_frames, cache.window_frames)
        if not gone:
            return
        rope, tpf = place[0], cache.tokens_per_frame
        slots = frame_slots_tensor(cache, gone)
        table = spatial_table(rope, cache.grid_h, cache.grid_w, cache.device)
        first = temporal_planes(rope)
        long_slot, short_slot = self.memory_slots()
        for layer in cache.layers:
            k, v = slot_tokens(layer.k, tpf), slot_tokens(layer.v, tpf)
            ev_k = k.index_select(1, slots).flatten(1, 2)  # [B, n * tpf, H, D]
            mean_k = rotate_planes(ev_k, table.repeat(len(gone), 1, 1), first, inverse=True).mean(dim=1)
            memory_k = rotate_planes(mean_k[:, None].expand(-1, tpf, -1, -1), table, first)
            memory_v = v.index_select(1, slots).mean(dim=(1, 2))[:, None].expand(-1, tpf, -1, -1)
            for slot, alpha in ((long_slot, self.alpha_long), (short_slot, self.alpha_short)):
                if self.initialized:
                    k[:, slot].lerp_(memory_k, alpha)
                    v[:, slot].lerp_(memory_v, alpha)
                else:
                    k[:, slot].copy_(memory_k)
                    v[:, slot].copy_(memory_v)
        self.initialized = True


__all__ = ["MemRoPE"]
