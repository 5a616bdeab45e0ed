"""Where a chunk sits: its frames, ring slots, RoPE tables and softmax scale.

Two parts, one home each:

* :class:`PositionPolicy` (host, once per chunk): from the FlexConfig and the video length,
  which RoPE thetas (the length L that sets S), which position shift (sliding-window
  positions) and which softmax scale (YaRN) a chunk gets.
* :func:`chunk_positions`: the single builder of a chunk's frame indices, slots and (cos, sin)
  tables. The eager path calls it with host ints; the fixed-buffer compiled pass
  (:mod:`flex.chunk_step`) calls it with 0-d device tensors and device theta buffers, inside
  the traced pass -- the same code, so both paths compute the same bits.

Positions: a query of frame f sits at position f - shift; a key of frame f at position f
when f is a sink frame, else f - shift. shift 0 is Wan's absolute positions; a shift needs
rotate-on-load (cached keys then carry no temporal rotation, and each slot's key table is
rebuilt from the frame it holds).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .cache import SlotTable, chunk_frames_tensor
from .config import FlexConfig
from .methods import build_positions
from .rope import Rope3D, cos_sin


@dataclass
class ChunkPositions:
    """Everything a pass needs to place one chunk, shared by its passes and every layer.

    frames / slots [n] int64: each chunk frame's index and ring slot; freqs_t [n, C_t, 2]
    rotates the chunk's queries (and its keys unless keys are rotated on load); freqs_h /
    freqs_w the rows and columns; key_freqs_t [n_slots, C_t, 2] (or None) is the temporal
    rotation of each slot's keys applied at read time. With per-head thetas the temporal
    tables have a head dimension: [n, H, C_t, 2] and [n_slots, H, C_t, 2].
    """

    frames: torch.Tensor
    slots: torch.Tensor
    freqs_t: torch.Tensor
    freqs_h: torch.Tensor
    freqs_w: torch.Tensor
    key_freqs_t: torch.Tensor | None
    scale: float

    @property
    def rotate_on_load(self) -> bool:
        return self.key_freqs_t is not None


def _check_shift(first_frame, position_shift, rotate_on_load: bool) -> None:
    if isinstance(position_shift, torch.Tensor):
        return  # device value: checked by the host side that filled it
    if not isinstance(position_shift, int) or isinstance(position_shift, bool) or position_shift < 0:
        raise ValueError(f"position_shift must be an int >= 0, got {position_shift!r}")
    if position_shift and not rotate_on_load:
        raise ValueError("position_shift > 0 needs rotate_on_load=True (pre-rotated keys cannot move)")
    if not isinstance(first_frame, torch.Tensor) and position_shift > first_frame:
        raise ValueError(f"position_shift ({position_shift}) must not exceed first_frame ({first_frame})")


def chunk_positions(
    rope: Rope3D,
    table: SlotTable,
    first_frame,
    n_frames: int,
    grid_h: int,
    grid_w: int,
    *,
    position_shift=0,
    rotate_on_load: bool = False,
    scale: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> ChunkPositions:
    """Frames, slots and RoPE tables of chunk [first_frame, +n_frames) on ``table``'s device.

    ``first_frame`` and ``position_shift`` are host ints or 0-d int64 device tensors;
    ``rope``'s thetas may be host or device tensors. No value is read back to the host.
    """
    _check_shift(first_frame, position_shift, rotate_on_load)
    table.check_chunk(first_frame, n_frames)
    frames = chunk_frames_tensor(first_frame, n_frames, table.device)
    return frame_positions(rope, table, frames, grid_h, grid_w, position_shift=position_shift,
                           rotate_on_load=rotate_on_load, scale=scale, dtype=dtype)


def frame_positions(
    rope: Rope3D,
    table: SlotTable,
    frames: torch.Tensor,
    grid_h: int,
    grid_w: int,
    *,
    position_shift=0,
    rotate_on_load: bool = False,
    scale: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> ChunkPositions:
    """:func:`chunk_positions` for any frames already checked to fit the cache (e.g. the
    resident frames re-cached at a prompt switch): a frame f sits at position f when it is a
    sink frame, else at f - position_shift -- for queries and keys alike."""
    device = table.device
    slots = table.slots_of(frames)
    if scale is None:
        head_dim = 2 * (rope.thetas_t.shape[-1] + rope.thetas_h.numel() + rope.thetas_w.numel())
        scale = head_dim ** -0.5
    key_ft = None
    if rotate_on_load:
        held = table.after(frames, slots)
        pos = torch.where(held < table.sink_frames, held, held - position_shift).clamp_min(0)
        key_ft = cos_sin(pos, rope.thetas_t, dtype)  # empty slots (-1) are masked; any row will do
    query_pos = torch.where(frames < table.sink_frames, frames, frames - position_shift)
    return ChunkPositions(
        frames, slots,
        cos_sin(query_pos, rope.thetas_t, dtype),
        cos_sin(torch.arange(grid_h, device=device), rope.thetas_h, dtype),
        cos_sin(torch.arange(grid_w, device=device), rope.thetas_w, dtype),
        key_ft, float(scale),
    )


class PositionPolicy:
    """The RoPE thetas, position shift and softmax scale of each chunk of a stream: the positions
    policy of the config's method (see :mod:`flex.methods.positions`; "flex" is the config's own
    fields: absolute or window positions, static or dynamic S)."""

    def __init__(self, config: FlexConfig, head_dim: int, num_heads: int | None = None):
        self.config = config
        self.head_dim = head_dim
        self.policy = build_positions(config, head_dim, num_heads)

    @property
    def rotate_on_load(self) -> bool:
        return self.policy.rotate_on_load

    def length_and_shift(self, first_frame: int, n_frames: int, total_frames: int) -> tuple[int, int]:
        """(length L that sets the RoPE scale S, position shift) of chunk [first_frame, +n_frames)."""
        return self.policy.length_and_shift(first_frame, n_frames, total_frames)

    def rope_for_length(self, length: int) -> Rope3D:
        """The thetas for RoPE length L (kept while L does not change)."""
        return self.policy.rope_for_length(length)

    def for_chunk(self, first_frame: int, n_frames: int, total_frames: int) -> tuple[Rope3D, int, float]:
        """(RoPE thetas, position shift, softmax scale) of chunk [first_frame, +n_frames)."""
        return self.policy.for_chunk(first_frame, n_frames, total_frames)


__all__ = ["ChunkPositions", "PositionPolicy", "chunk_positions", "frame_positions"]
