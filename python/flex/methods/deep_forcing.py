"""Deep Forcing (Yi, Jang, Cho, Nam, Yoon, Kim, arXiv 2512.05081): Deep Sink and Participative
Compression. No official code was released (the project page cvlab-kaist.github.io/DeepForcing
links none); this follows the paper.

*Deep Sink* (paper section "Deep Sink"): the sink is 40-60 % of the window (10-15 of Self Forcing's 21 frames)
and its temporal RoPE phase is re-aligned to the current timeline: the sink keys are shifted
so that the last sink frame sits right before the oldest window frame. RoPE attention depends
only on position differences, so that is the "window" position policy with a deep sink (sink
frame f at f, window frames right after, queries at the end): no hook, the registry's
"deep-sink" settings (sink_frames 10, window_frames 11, position_policy "window").

*Participative Compression* (paper section "Participative Compression"): when the cache is full, the candidate tokens (the
compressed history and the frames about to leave the window) are scored by the attention they
receive from the queries of the most recent frames, summed over those queries and the heads;
the top-C are kept, the rest evicted. Here the compressed history is ``compressed`` more sink
slots (C = compressed * tokens_per_frame tokens) placed, like the sink, right before the window;
the kept tokens keep their spatial rotation (the cache rotates spatial planes on write) and
take the temporal position of the compressed slot they land in, in their original order. Scores
come once per chunk from the clean pass: its queries are handed to the policy (``observer``),
then one attention call with log-sum-exp over the whole ring gives each query's softmax
normaliser and only the candidate columns are formed: exp(q k_c * scale - lse), never the full
attention matrix of every pass. Compression is a gather into the compressed slots: per-slot
masks suffice, no per-token mask.
"""
from __future__ import annotations

import torch

from .. import ops
from ..cache import ModelKVCache
from ..positions import frame_positions
from .cache_policy import CachePolicy, evicted_frames, frame_slots_tensor, rotate_planes, slot_tokens


class ParticipativeCompression(CachePolicy):
    """The top-C tokens of the older history by the attention recent queries give them, kept in
    the last ``compressed`` sink slots (Deep Sink is the config: sink slots first, "window" positions)."""

    name = "deep-forcing"
    observes_queries = True

    def __init__(self, config, params: dict):
        super().__init__(config, params)
        self.compressed, self.query_frames = params["compressed"], params["query_frames"]
        self.sink = config.sink_frames - self.compressed
        self.queries: dict[int, torch.Tensor] = {}

    def start(self, cache: ModelKVCache, rotate_on_load: bool) -> None:
        super().start(cache, rotate_on_load)
        self.queries = {}
        cache.observer = None

    def _observe(self, layer: int, q: torch.Tensor) -> None:
        self.queries[layer] = q

    def before_chunk(self, cache: ModelKVCache, first_frame: int, n_frames: int, place: tuple) -> None:
        end = first_frame + n_frames
        nxt = evicted_frames(end, n_frames, cache.sink_frames, cache.window_frames)
        cache.observer = self._observe if nxt else None  # queries are needed only before an eviction

    def scores(self, cache: ModelKVCache, layer: int, frames: torch.Tensor, slots: torch.Tensor,
               place: tuple) -> torch.Tensor:
        """[B, C_tokens] attention mass the recent queries give each token of the candidate frames."""
        rope, shift, scale = place
        tpf = cache.tokens_per_frame
        q = self.queries[layer][:, -self.query_frames * tpf:]
        pos = frame_positions(rope, cache.table, frames, cache.grid_h, cache.grid_w, position_shift=shift,
                              rotate_on_load=True, scale=scale, dtype=q.dtype if q.dtype == torch.float64
                              else torch.float32)
        kv = cache.layers[layer]
        _, lse = ops.ring_attention(q, kv.k, kv.v, cache.slot_frame, tpf, scale=pos.scale,
                                    key_freqs_t=pos.key_freqs_t, return_lse=True)
        k = slot_tokens(kv.k, tpf).index_select(1, slots).flatten(1, 2)
        k = rotate_planes(k, pos.key_freqs_t.index_select(0, slots).repeat_interleave(tpf, dim=0), 0)
        total = torch.zeros(k.shape[0], k.shape[1], dtype=torch.float64, device=k.device)
        for h in range(q.shape[2]):  # one head at a time: [Tq, T_candidates] at most
            logits = torch.einsum("bqd,bkd->bqk", q[:, :, h].double(), k[:, :, h].double()) * pos.scale
            total += torch.exp(logits - lse[:, h, :, None].double()).sum(dim=1)
        return total

    def after_chunk(self, cache: ModelKVCache, first_frame: int, n_frames: int, place: tuple) -> None:
        if cache.observer is None:
            return
        cache.observer = None
        end = first_frame + n_frames
        gone = evicted_frames(end, n_frames, cache.sink_frames, cache.window_frames)
        frames = torch.arange(first_frame, end, device=cache.device)
        tpf, keep = cache.tokens_per_frame, self.compressed * cache.tokens_per_frame
        # candidates: the compressed slots (sink slots: slot = frame), then the frames about to leave
        slots = torch.cat((frame_slots_tensor(cache, range(self.sink, self.sink + self.compressed)),
                           frame_slots_tensor(cache, gone)))
        lo, hi = self.sink * tpf, (self.sink + self.compressed) * tpf
        for i, kv in enumerate(cache.layers):
            top = self.scores(cache, i, frames, slots, place).topk(keep, dim=1).indices.sort(dim=1).values
            for buf in (kv.k, kv.v):
                cand = slot_tokens(buf, tpf).index_select(1, slots).flatten(1, 2)  # [B, T_c, H, D]
                idx = top[:, :, None, None].expand(-1, -1, cand.shape[2], cand.shape[3])
                buf[:, lo:hi].copy_(cand.gather(1, idx))
        self.queries = {}


__all__ = ["ParticipativeCompression"]
