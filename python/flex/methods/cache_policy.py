"""Cache policies: what the ring KV cache keeps, as device ops between a chunk's passes.

A cache policy is the second part of a long-horizon method (ARCHITECTURE.md, "Where it grows
next"): the first part places frames in time (positions), this one decides which K/V the
ring slots hold. It acts only through the slot table and the per-layer K/V tensors of a
:class:`flex.cache.ModelKVCache`, in place, with device ops whose sizes are known on the
host: no cache copy, no host read, so the steady state never syncs and the fixed-buffer
(compiled) pass is unaffected -- the hooks run between passes, outside it.

The stream calls, per chunk [first_frame, +n_frames):

    before_chunk(cache, first_frame, n_frames, place)   before the chunk's first pass
    after_chunk(cache, first_frame, n_frames, place)    after its clean (context) pass

``place`` is what :meth:`flex.positions.PositionPolicy.for_chunk` gives the chunk: (its
:class:`flex.rope.Rope3D`, position shift, softmax scale).
A policy is built from the FlexConfig (its slot-table sizes and positions are the config's,
set by the method's registered settings) and the method's parameters (flex.methods.registry).
"""
from __future__ import annotations

import torch

from ..cache import ModelKVCache
from ..rope import Rope3D, cos_sin


class CachePolicy:
    """The default: the plain ring (sink + sliding window), nothing done between passes."""

    name = "ring"
    observes_queries = False  # whether the clean pass hands its queries to the policy (cache.observer)

    def __init__(self, config, params: dict | None = None):
        self.config, self.params = config, dict(params or {})
        self.rotate_on_load = False

    def start(self, cache: ModelKVCache, rotate_on_load: bool) -> None:
        """A new stream on ``cache`` (emptied); ``rotate_on_load``: its keys are cached without
        their temporal rotation. Resets the policy's own state."""
        self.rotate_on_load = rotate_on_load

    def before_chunk(self, cache: ModelKVCache, first_frame: int, n_frames: int, place: tuple) -> None:
        """Device ops before the first pass of chunk [first_frame, +n_frames)."""

    def after_chunk(self, cache: ModelKVCache, first_frame: int, n_frames: int, place: tuple) -> None:
        """Device ops after the clean pass of chunk [first_frame, +n_frames)."""


def evicted_frames(first_frame: int, n_frames: int, sink_frames: int, window_frames: int) -> range:
    """Frames that chunk [first_frame, +n_frames) overwrites in the ring (a host range)."""
    return range(max(first_frame - window_frames, sink_frames), max(first_frame + n_frames - window_frames, sink_frames))


def frames_tensor(frames: range, device) -> torch.Tensor:
    """A host range of frames as an int64 device tensor, made on the device (no host copy)."""
    return torch.arange(frames.start, frames.stop, frames.step, dtype=torch.int64, device=device)


def frame_slots_tensor(cache: ModelKVCache, frames: range) -> torch.Tensor:
    """Ring slots of a range of frames, as an int64 device tensor."""
    return cache.table.slots_of(frames_tensor(frames, cache.device))


def slot_tokens(k: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """View [B, n_slots * tpf, H, D] as [B, n_slots, tpf, H, D]."""
    b, t, h, d = k.shape
    return k.view(b, t // tokens_per_frame, tokens_per_frame, h, d)


def rotate_planes(x: torch.Tensor, table: torch.Tensor, first_plane: int, inverse: bool = False) -> torch.Tensor:
    """Rotate the interleaved planes [first_plane, first_plane + C) of x [..., T, H, D] by a
    per-token (cos, sin) table [T, C, 2] (its inverse with ``inverse``); float64 math, x's dtype."""
    c = table.shape[1]
    lo, hi = 2 * first_plane, 2 * (first_plane + c)
    x64 = x.to(torch.float64)
    pairs = x64[..., lo:hi].unflatten(-1, (c, 2))
    cos = table[..., 0].to(torch.float64)[:, None, :]
    sin = table[..., 1].to(torch.float64)[:, None, :]
    if inverse:
        sin = -sin
    a, b = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
    out = x64.clone()
    out[..., lo:hi] = rotated
    return out.to(x.dtype)


def spatial_table(rope: Rope3D, grid_h: int, grid_w: int, device) -> torch.Tensor:
    """Per-token (cos, sin) [tpf, C_h + C_w, 2] of the height and width planes of one frame."""
    tpf = grid_h * grid_w
    tok = torch.arange(tpf, device=device)
    fh = cos_sin(torch.arange(grid_h, device=device), rope.thetas_h, torch.float64)
    fw = cos_sin(torch.arange(grid_w, device=device), rope.thetas_w, torch.float64)
    return torch.cat((fh[tok // grid_w], fw[tok % grid_w]), dim=1)


def temporal_planes(rope: Rope3D) -> int:
    return rope.thetas_t.numel()


__all__ = ["CachePolicy", "evicted_frames", "frame_slots_tensor", "frames_tensor", "rotate_planes", "slot_tokens",
           "spatial_table", "temporal_planes"]
