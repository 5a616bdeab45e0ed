"""FLEX's side of an accelerated upstream model: its ring KV cache, positions and pass kernels.

Upstream calls its model once per pass with ``kv_cache`` and ``current_start`` (a token
offset). :meth:`Runtime.begin_pass` turns that call into what :func:`flex.models.wan.
ring_self_attention` needs, once per pass for every layer, exactly as
:meth:`flex.models.wan.CausalWanModel.forward` does for the project's own model: the chunk's
frames, slots and RoPE tables from :class:`flex.positions.PositionPolicy` and
:func:`flex.positions.chunk_positions`, the chunk reserved and recorded in the
:class:`flex.cache.SlotTable`, the kernels planned by :func:`flex.ops.plan`. The ring cache
(:class:`flex.cache.ModelKVCache`, sink + window frames per layer) replaces upstream's lists
of dicts; it is made on the first pass (the token grid is known only then) and emptied when a
pass starts at frame 0, i.e. at every new video.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import ops
from ..cache import ModelKVCache
from ..config import FlexConfig
from ..positions import ChunkPositions, PositionPolicy, chunk_positions
from .upstream import UpstreamModel


@dataclass
class PassState:
    """What every layer of one pass shares."""

    positions: ChunkPositions
    resident_tokens: int | None
    kernels: ops.PassKernels
    grid_h: int
    grid_w: int


class Runtime:
    """The ring cache, positions and kernels of one accelerated upstream model.

    ``num_frames``: the video length in latent frames, which sets the RoPE scale S of the
    static strategies; an accelerated pipeline sets it from each ``inference`` call's noise.
    """

    def __init__(self, upstream: UpstreamModel, config: FlexConfig, backend, num_frames: int | None = None):
        self.upstream = upstream
        self.config = config
        self.backend = backend
        self.num_frames = num_frames
        attn = upstream.attentions[0]
        self.num_heads, self.head_dim = int(attn.num_heads), int(attn.head_dim)
        self.positions = PositionPolicy(config, self.head_dim, self.num_heads)  # a method may tune each head
        self.cache: ModelKVCache | None = None
        self.current: PassState | None = None
        self._chunk: tuple | None = None  # (key, ChunkPositions) of the chunk being denoised

    @property
    def model(self):
        return self.upstream.model

    def _grid(self, x) -> tuple[int, int, int, int]:
        """(batch, frames, grid_h, grid_w) of upstream's model input ([B, C, F, H, W] or a list)."""
        first = x[0]
        if not isinstance(first, torch.Tensor) or first.dim() != 4:
            raise ValueError(f"x must be latents [B, C, F, H, W] (or a list of [C, F, H, W]), got "
                             f"{tuple(getattr(x, 'shape', ())) or type(x).__name__}")
        pt, ph, pw = self.model.patch_size
        _, f, h, w = first.shape
        return len(x), f // pt, h // ph, w // pw

    def _ring_cache(self, batch: int, grid_h: int, grid_w: int, dtype, device) -> ModelKVCache:
        cfg = self.config
        if self.cache is None or not self.cache.matches(batch, grid_h, grid_w, cfg.sink_frames, cfg.window_frames,
                                                        dtype, device):
            self.cache = ModelKVCache(len(self.upstream.attentions), batch, self.num_heads, self.head_dim, grid_h,
                                      grid_w, cfg.sink_frames, cfg.window_frames, dtype, device)
            self._chunk = None
        return self.cache

    def begin_pass(self, x, current_start) -> None:
        """Place the pass of upstream's model over chunk x starting at token ``current_start``."""
        batch, n, gh, gw = self._grid(x)
        weight = self.model.patch_embedding.weight
        cache = self._ring_cache(batch, gh, gw, weight.dtype, weight.device)
        current_start = int(current_start)
        if current_start % (gh * gw):
            raise ValueError(f"current_start ({current_start}) must be a multiple of the tokens per frame "
                             f"({gh * gw}); set the pipeline's frame_seq_length to {gh * gw}")
        first = current_start // (gh * gw)
        if first == 0:  # a new video (or another pass of its first chunk, which sees only itself)
            cache.reset()
            self._chunk = None
        total = self.num_frames if self.num_frames is not None else first + n
        key = (first, n, total)
        if self._chunk is None or self._chunk[0] != key:
            rope, shift, scale = self.positions.for_chunk(first, n, total)
            table_dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
            self._chunk = (key, chunk_positions(rope, cache.table, first, n, gh, gw, position_shift=shift,
                                                rotate_on_load=self.config.rotate_on_load, scale=scale,
                                                dtype=table_dtype))
        pos = self._chunk[1]
        cache.table.reserve(first, n)
        resident = cache.table.resident_prefix_tokens()
        kernels = ops.plan(self.backend, weight.device, weight.dtype, self.head_dim, pos.rotate_on_load,
                           resident_prefix=resident is not None)
        cache.table.record(pos.frames, pos.slots)
        self.current = PassState(pos, resident, kernels, gh, gw)

    def end_pass(self) -> None:
        self.current = None


__all__ = ["PassState", "Runtime"]
