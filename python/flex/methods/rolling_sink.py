"""Rolling Sink (Li, Liu, Lin, Chandraker, arXiv 2602.07775): a strictly bounded cache whose
older blocks are re-filled with rolled sink content at sliding time indices.

Paper, method section ("Rolling Sink"): the cache holds K blocks, S of them sink; *Sliding Indices*:
the cached blocks carry the time indices of the most recent K blocks, so the cache always
looks like a window seen within the training horizon; *Sliding Semantics*: the sink's content
is rolled through the first blocks of the video, forward then backward, so the sink never
freezes on one moment.

Official code (github.com/Rolling-Sink/Rolling-Sink, commit d7fc0d9f1ebd, file
wan/modules/causal_model.py, ``CausalWanSelfAttention.forward``, the block between
"Rolling Sink starts" and "ends") on Self Forcing: a 21-frame FIFO cache (K = 7 blocks of 3
frames, absolute RoPE positions); the unrotated K/V of the first 21 frames are kept
(``k_original``); after the clean pass of every chunk from frame 21 on, the K/V of the block
just before it (absolute frames RS = start - 3 .. start - 1) are replaced by 3 stored frames,
re-rotated at positions RS..RS+2: frames [RS mod 18, +3) on even sweeps and the same span of
frames in reverse order on odd sweeps over the first 18 frames (18 = (K - 1) * 3). So S = K - 1
blocks carry rolled sink content and the newest block is real.

Here, on the ring: sink_frames 0 and window_frames K * chunk (the FIFO), the store holds the
first S * chunk frames' keys without their temporal rotation (spatial planes rotated, as the
cache keeps them), and the roll writes into the ring slots of the replaced frames; their
slot frames (and so their positions) stay those frames': the sliding indices. General S < K - 1
replaces the block K - S chunks back.
"""
from __future__ import annotations

import torch

from ..cache import ModelKVCache
from ..rope import cos_sin
from .cache_policy import CachePolicy, frame_slots_tensor, frames_tensor, rotate_planes, slot_tokens


def roll_source_frames(block_first_frame: int, n_frames: int, sweep_frames: int) -> range:
    """The stored frames (in order) written into the block starting at ``block_first_frame``:
    forward through [0, sweep_frames) in steps of ``n_frames``, then backward, frame order
    reversed on the backward sweep (official code: ``reverse``, ``left``, ``right``)."""
    offset = block_first_frame % sweep_frames
    if (block_first_frame // sweep_frames) % 2 == 1:
        right = sweep_frames - offset
        return range(right - 1, right - 1 - n_frames, -1)
    return range(offset, offset + n_frames)


class RollingSink(CachePolicy):
    """K blocks of ``chunk_frames`` in a FIFO ring, the S older ones refilled with rolled sink content."""

    name = "rolling-sink"

    def __init__(self, config, params: dict):
        super().__init__(config, params)
        self.chunk_frames = config.chunk_frames
        self.blocks = config.window_frames // config.chunk_frames
        self.sink_blocks = params["sink_blocks"]
        self.store: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def sweep_frames(self) -> int:
        return self.sink_blocks * self.chunk_frames

    def start(self, cache: ModelKVCache, rotate_on_load: bool) -> None:
        super().start(cache, rotate_on_load)
        self.tpf = tpf = cache.tokens_per_frame
        self.store = []
        for layer in cache.layers:
            b, _, h, d = layer.k.shape
            shape = (b, self.sweep_frames, tpf, h, d)
            self.store.append((layer.k.new_zeros(shape), layer.v.new_zeros(shape)))

    def _temporal(self, rope, frames: range, device) -> torch.Tensor:
        """Per-token temporal (cos, sin) of frames at their absolute positions."""
        return cos_sin(frames_tensor(frames, device), rope.thetas_t, torch.float64).repeat_interleave(self.tpf, dim=0)

    def after_chunk(self, cache: ModelKVCache, first_frame: int, n_frames: int, place: tuple) -> None:
        rope, tpf = place[0], cache.tokens_per_frame
        chunk = first_frame // n_frames
        kept = range(first_frame, min(first_frame + n_frames, self.sweep_frames))
        if kept:  # the first S blocks: remember their clean keys without the temporal rotation
            slots = frame_slots_tensor(cache, kept)
            table = None if self.rotate_on_load else self._temporal(rope, kept, cache.device)
            idx = frames_tensor(kept, cache.device)
            for layer, (sk, sv) in zip(cache.layers, self.store):
                k = slot_tokens(layer.k, tpf).index_select(1, slots)
                if table is not None:
                    k = rotate_planes(k.flatten(1, 2), table, 0, inverse=True).unflatten(1, (len(kept), tpf))
                sk.index_copy_(1, idx, k)
                sv.index_copy_(1, idx, slot_tokens(layer.v, tpf).index_select(1, slots))
        if chunk < self.blocks:
            return
        block = (chunk - (self.blocks - self.sink_blocks)) * n_frames
        targets = range(block, block + n_frames)
        source = frames_tensor(roll_source_frames(block, n_frames, self.sweep_frames), cache.device)
        slots = frame_slots_tensor(cache, targets)
        table = None if self.rotate_on_load else self._temporal(rope, targets, cache.device)
        for layer, (sk, sv) in zip(cache.layers, self.store):
            k = sk.index_select(1, source)
            if table is not None:
                k = rotate_planes(k.flatten(1, 2), table, 0).unflatten(1, (n_frames, tpf))
            slot_tokens(layer.k, tpf).index_copy_(1, slots, k)
            slot_tokens(layer.v, tpf).index_copy_(1, slots, sv.index_select(1, source))


__all__ = ["RollingSink", "roll_source_frames"]
