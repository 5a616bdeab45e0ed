"""Every cache of a streaming pass: the ring-buffer KV cache with sink frames, its slot
bookkeeping, the per-layer caches of a model, and the prompt's cross-attention K/V.

Slots are frame-granular: slot s holds the tokens [s * tpf, (s + 1) * tpf) of k and v.
Frame f lives in a slot that is a pure function of f:

    f <  sink_frames : slot f                                    (never evicted)
    f >= sink_frames : slot sink + (f - sink) % window_frames     (ring)

so writing frame f overwrites frame f - window_frames (the oldest window frame) and the 4
denoising passes plus the clean pass of a chunk all land in the same slots. ``slot_frame``
([n_slots] int64 on the cache's device, -1 when empty) is the only bookkeeping the kernels
need; slot indices are computed with tensor ops, so nothing on the per-layer path syncs.

:class:`SlotTable` owns that bookkeeping, once for all layers of a model: ``reserve`` (host
side: checks a chunk fits and moves the host mirror) and ``record`` (device side: the frames
now held by the slots) are the only two places it changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .checks import check_int


def frame_slots(frames: torch.Tensor, sink_frames: int, window_frames: int, sink_first: int = 0) -> torch.Tensor:
    """Slot index of each frame index in ``frames`` (any integer tensor, any device). The sink
    holds frames [sink_first, sink_first + sink_frames) (0 unless a switch moved it)."""
    if not isinstance(window_frames, int) or window_frames < 1:
        raise ValueError(f"window_frames must be an int >= 1 (frames past the sink need a ring), got {window_frames!r}")
    frames = frames.to(torch.int64)
    ring = sink_frames + torch.remainder(frames - sink_frames, window_frames)
    in_sink = (frames >= sink_first) & (frames < sink_first + sink_frames)
    return torch.where(in_sink, frames - sink_first, ring)


def _check_sizes(**sizes) -> None:
    for name, (value, low) in sizes.items():
        check_int(name, value, low)


def chunk_frames_tensor(first_frame, n_frames: int, device) -> torch.Tensor:
    """Frame indices [first_frame, first_frame + n_frames) as int64 on ``device``.

    ``first_frame`` is a host int or a 0-d integer tensor (then nothing is read back).
    """
    if isinstance(first_frame, torch.Tensor):
        return first_frame.to(device, torch.int64) + torch.arange(n_frames, device=device)
    return torch.arange(first_frame, first_frame + n_frames, device=device)


class SlotTable:
    """Which frame each ring slot holds (device) and how far frames were written (host)."""

    def __init__(self, sink_frames: int, window_frames: int, tokens_per_frame: int, device=None):
        _check_sizes(sink_frames=(sink_frames, 0), window_frames=(window_frames, 0),
                     tokens_per_frame=(tokens_per_frame, 1))
        if sink_frames + window_frames == 0:
            raise ValueError("sink_frames + window_frames must be > 0")
        self.sink_frames = sink_frames
        self.window_frames = window_frames
        self.tokens_per_frame = tokens_per_frame
        self.n_slots = sink_frames + window_frames
        self.slot_frame = torch.full((self.n_slots,), -1, dtype=torch.int64, device=device)
        self.reset_host()

    @property
    def device(self) -> torch.device:
        return self.slot_frame.device

    def reset_host(self) -> None:
        # Host mirror (no device read needed): the end of the frames written so far, and
        # whether they were written in order from frame 0 (then the resident slots form a prefix);
        # the first sink frame (moved by rebase) and the first frame the ring may still hold
        # (raised by flush).
        self.frames_written = 0
        self.in_order = True
        self.sink_first = 0
        self.window_from = 0

    def reset(self) -> None:
        self.slot_frame.fill_(-1)
        self.reset_host()

    def check_chunk(self, first_frame, n_frames: int) -> None:
        """A chunk [first_frame, +n_frames) must fit the window (its frames in distinct slots)."""
        _check_sizes(n_frames=(n_frames, 1))
        if isinstance(first_frame, torch.Tensor):
            return  # device value: validated by the caller's host-side schedule
        _check_sizes(first_frame=(first_frame, 0))
        in_window = first_frame + n_frames - max(first_frame, self.sink_frames)
        if in_window > self.window_frames:
            raise ValueError(
                f"cache overflow: frames [{first_frame}, {first_frame + n_frames}) need "
                f"{in_window} window slots but window_frames is {self.window_frames}"
            )

    def slots_of(self, frames: torch.Tensor) -> torch.Tensor:
        """Slots of frame indices already checked to fit (see :meth:`check_chunk`)."""
        if self.window_frames == 0:  # a sink-only cache: frame f < sink_frames lives in slot f
            return frames.to(torch.int64)
        return frame_slots(frames, self.sink_frames, self.window_frames, self.sink_first)

    def slots(self, first_frame, n_frames: int) -> torch.Tensor:
        """Slots of frames [first_frame, first_frame + n_frames) as an int64 device tensor."""
        self.check_chunk(first_frame, n_frames)
        return self.slots_of(chunk_frames_tensor(first_frame, n_frames, self.device))

    def reserve(self, first_frame: int, n_frames: int) -> None:
        """Host side of writing chunk [first_frame, +n_frames): check it fits, move the mirror."""
        self.check_chunk(first_frame, n_frames)
        if isinstance(first_frame, torch.Tensor):
            self.in_order = False  # unknown on the host: never assume a prefix
            return
        if first_frame > self.frames_written:
            self.in_order = False  # a gap: the slots of the skipped frames stay empty
        self.frames_written = max(self.frames_written, first_frame + n_frames)

    def record(self, frames: torch.Tensor, slots: torch.Tensor) -> None:
        """Device side: ``slots`` now hold ``frames`` (no host read; traceable)."""
        self.slot_frame.index_copy_(0, slots, frames)

    def after(self, frames: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``slot_frame`` as it will be once ``frames`` are recorded in ``slots`` (device ops)."""
        return self.slot_frame.clone().index_copy_(0, slots, frames)

    def flush(self, keep_from: int) -> None:
        """Empty the ring slots of every window frame before ``keep_from`` (the sink stays)."""
        self.window_from = max(self.window_from, keep_from)
        ring = torch.arange(self.n_slots, device=self.device) >= self.sink_frames
        self.slot_frame.masked_fill_(ring & (self.slot_frame < keep_from), -1)

    def rebase(self, first: int) -> None:
        """Make frames [first, first + sink_frames) the sink and the frames after them the ring
        (host side; the caller rewrites every slot, e.g. a re-cache of the last sink + window frames)."""
        self.sink_first = first
        self.window_from = first + self.sink_frames

    def _window_start(self) -> int:
        return max(self.sink_first + self.sink_frames, self.frames_written - self.window_frames)

    def resident_frames(self) -> list[int]:
        """The frames the slots hold once frames [0, frames_written) were written in order (host)."""
        if not self.in_order:
            raise ValueError("the resident frames are known on the host only when frames were written in order")
        end = self.frames_written
        sink = list(range(self.sink_first, min(self.sink_first + self.sink_frames, end)))
        return sink + list(range(max(self._window_start(), self.window_from), end))

    def resident_prefix_tokens(self) -> int | None:
        """Tokens of the resident prefix, or None when the resident slots are not a prefix.

        When frames were written in order from frame 0, the resident slots always form a
        prefix [0, n) of the ring, and attention that needs no mask can run on k[:, :n]
        directly (key order does not matter to softmax). After a gap they do not.
        """
        if not self.in_order or self.window_from > self._window_start():  # a flushed slot is still empty
            return None
        return min(self.n_slots, self.frames_written) * self.tokens_per_frame


class _TableViews:
    """The slot table's sizes and bookkeeping, read through a cache that owns (or shares) it."""

    table: SlotTable
    sink_frames = property(lambda self: self.table.sink_frames)
    window_frames = property(lambda self: self.table.window_frames)
    tokens_per_frame = property(lambda self: self.table.tokens_per_frame)
    n_slots = property(lambda self: self.table.n_slots)
    slot_frame = property(lambda self: self.table.slot_frame)
    frames_written = property(lambda self: self.table.frames_written)


class RingKVCache(_TableViews):
    """k, v: [B, (sink + window) * tpf, H, D] plus the slot bookkeeping (``table``).

    Layers of one model share one :class:`SlotTable` (``table=``): they hold the same frames.
    """

    def __init__(
        self,
        batch: int,
        heads: int,
        head_dim: int,
        tokens_per_frame: int,
        sink_frames: int,
        window_frames: int,
        dtype: torch.dtype = torch.float32,
        device=None,
        table: SlotTable | None = None,
    ):
        _check_sizes(batch=(batch, 1), heads=(heads, 1), head_dim=(head_dim, 1),
                     tokens_per_frame=(tokens_per_frame, 1), sink_frames=(sink_frames, 0),
                     window_frames=(window_frames, 0))
        if table is None:
            table = SlotTable(sink_frames, window_frames, tokens_per_frame, device)
        elif (table.sink_frames, table.window_frames, table.tokens_per_frame) != (
                sink_frames, window_frames, tokens_per_frame):
            raise ValueError("table was built for another sink / window / tokens_per_frame")
        self.table = table
        shape = (batch, table.n_slots * tokens_per_frame, heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)


    @property
    def capacity_frames(self) -> int:
        return self.n_slots

    def slots(self, first_frame, n_frames: int) -> torch.Tensor:
        """Slots of frames [first_frame, first_frame + n_frames) as an int64 device tensor."""
        return self.table.slots(first_frame, n_frames)

    def check_chunk(self, first_frame, n_frames: int) -> None:
        self.table.check_chunk(first_frame, n_frames)

    def write(self, k: torch.Tensor, v: torch.Tensor, first_frame, slots: torch.Tensor | None = None):
        """Store a chunk's k, v ([B, F * tpf, H, D]) in the slots of its frames."""
        if k.shape != v.shape:
            raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
        b, t, h, d = k.shape
        if (b, h, d) != (self.k.shape[0], self.k.shape[2], self.k.shape[3]) or t % self.tokens_per_frame:
            raise ValueError(
                f"k must be [B={self.k.shape[0]}, F*{self.tokens_per_frame}, H={self.k.shape[2]}, "
                f"D={self.k.shape[3]}], got {tuple(k.shape)}"
            )
        n_frames = t // self.tokens_per_frame
        if slots is None:
            slots = self.slots(first_frame, n_frames)
        tpf = self.tokens_per_frame
        self.k.view(b, self.n_slots, tpf, h, d).index_copy_(1, slots, k.reshape(b, n_frames, tpf, h, d).to(self.k.dtype))
        self.v.view(b, self.n_slots, tpf, h, d).index_copy_(1, slots, v.reshape(b, n_frames, tpf, h, d).to(self.v.dtype))
        self.mark_written(first_frame, n_frames, slots)

    def mark_written(self, first_frame, n_frames: int, slots: torch.Tensor) -> None:
        """Record that frames [first_frame, +n_frames) now live in ``slots`` (kernels wrote k, v)."""
        self.table.reserve(first_frame, n_frames)
        frames = chunk_frames_tensor(first_frame, n_frames, self.table.device)
        self.table.record(frames, slots.to(self.table.device, torch.int64))

    def resident_prefix_tokens(self) -> int | None:
        return self.table.resident_prefix_tokens()

    def reset(self) -> None:
        self.table.reset()


@dataclass
class TextCache:
    """Cross-attention K/V of one (batch of) prompt(s), one (k, v) per layer."""

    kv: list
    batch: int

    def __len__(self):
        return len(self.kv)


class ModelKVCache(_TableViews):
    """One :class:`RingKVCache` per layer of a model, all sharing one :class:`SlotTable`.

    ``observer`` (None, or ``fn(layer_index, rotated_queries)``): called by every layer of a
    pass with its queries, for a cache policy that scores keys by them (flex.methods).
    """

    observer = None

    def __init__(self, num_layers, batch, num_heads, head_dim, grid_h, grid_w, sink_frames, window_frames,
                 dtype=torch.float32, device=None):
        _check_sizes(num_layers=(num_layers, 1), grid_h=(grid_h, 1), grid_w=(grid_w, 1))
        self.grid_h, self.grid_w = grid_h, grid_w
        self.table = SlotTable(sink_frames, window_frames, grid_h * grid_w, device)
        self.layers = [
            RingKVCache(batch, num_heads, head_dim, grid_h * grid_w, sink_frames, window_frames, dtype, device,
                        table=self.table)
            for _ in range(num_layers)
        ]

    device = property(lambda self: self.table.device)
    dtype = property(lambda self: self.layers[0].k.dtype)
    batch = property(lambda self: self.layers[0].k.shape[0])

    def slots(self, first_frame: int, n_frames: int) -> torch.Tensor:
        return self.table.slots(first_frame, n_frames)

    def matches(self, batch, grid_h, grid_w, sink_frames, window_frames, dtype, device) -> bool:
        return (self.batch, self.grid_h, self.grid_w, self.sink_frames, self.window_frames, self.dtype) == (
            batch, grid_h, grid_w, sink_frames, window_frames, dtype) and self.device == torch.device(device)

    def reset(self) -> None:
        self.table.reset()

    def data_ptrs(self) -> list[int]:
        return [p for layer in self.layers for p in (layer.k.data_ptr(), layer.v.data_ptr())] + [
            self.table.slot_frame.data_ptr()]


WanKVCache = ModelKVCache  # the name models.wan exported

__all__ = ["ModelKVCache", "RingKVCache", "SlotTable", "TextCache", "WanKVCache", "chunk_frames_tensor",
           "frame_slots"]
