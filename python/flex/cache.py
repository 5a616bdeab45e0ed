"""Ring-buffer KV cache with attention-sink frames, one per attention layer.

Slots are frame-granular: slot s holds the tokens [s * tpf, (s + 1) * tpf) of k and v.
Frame f lives in a slot that is a pure function of f:

    f <  sink_frames : slot f                                    (never evicted)
    f >= sink_frames : slot sink + (f - sink) % window_frames     (ring)

so writing frame f overwrites frame f - window_frames (the oldest window frame) and the 4
denoising passes plus the clean pass of a chunk all land in the same slots. ``slot_frame``
([n_slots] int64 on the cache's device, -1 when empty) is the only bookkeeping the kernels
need; slot indices are computed with tensor ops, so nothing on the per-layer path syncs.
"""
from __future__ import annotations

import torch


def frame_slots(frames: torch.Tensor, sink_frames: int, window_frames: int) -> torch.Tensor:
    """Slot index of each frame index in ``frames`` (any integer tensor, any device)."""
    frames = frames.to(torch.int64)
    if window_frames == 0:
        return frames
    ring = sink_frames + torch.remainder(frames - sink_frames, window_frames)
    return torch.where(frames < sink_frames, frames, ring)


class RingKVCache:
    """k, v: [B, (sink + window) * tpf, H, D] plus ``slot_frame`` [sink + window]."""

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
    ):
        for name, value, low in (
            ("batch", batch, 1), ("heads", heads, 1), ("head_dim", head_dim, 1),
            ("tokens_per_frame", tokens_per_frame, 1), ("sink_frames", sink_frames, 0),
            ("window_frames", window_frames, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        if sink_frames + window_frames == 0:
            raise ValueError("sink_frames + window_frames must be > 0")
        self.sink_frames = sink_frames
        self.window_frames = window_frames
        self.tokens_per_frame = tokens_per_frame
        self.n_slots = sink_frames + window_frames
        shape = (batch, self.n_slots * tokens_per_frame, heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.slot_frame = torch.full((self.n_slots,), -1, dtype=torch.int64, device=device)
        # Host-side mirror of how far frames have been written (no device read needed).
        self.frames_written = 0

    @property
    def capacity_frames(self) -> int:
        return self.n_slots

    def slots(self, first_frame, n_frames: int) -> torch.Tensor:
        """Slots of frames [first_frame, first_frame + n_frames) as an int64 device tensor.

        ``first_frame`` is an int or a 0-d integer tensor (then nothing is read back).
        """
        self.check_chunk(first_frame, n_frames)
        device = self.slot_frame.device
        if isinstance(first_frame, torch.Tensor):
            frames = first_frame.to(device, torch.int64) + torch.arange(n_frames, device=device)
        else:
            frames = torch.arange(first_frame, first_frame + n_frames, device=device)
        return frame_slots(frames, self.sink_frames, self.window_frames)

    def check_chunk(self, first_frame, n_frames: int) -> None:
        if not isinstance(n_frames, int) or n_frames < 1:
            raise ValueError(f"n_frames must be an int >= 1, got {n_frames!r}")
        if isinstance(first_frame, torch.Tensor):
            return  # device value: validated by the caller's host-side schedule
        if not isinstance(first_frame, int) or first_frame < 0:
            raise ValueError(f"first_frame must be an int >= 0, got {first_frame!r}")
        in_window = first_frame + n_frames - max(first_frame, self.sink_frames)
        if in_window > self.window_frames:
            raise ValueError(
                f"cache overflow: frames [{first_frame}, {first_frame + n_frames}) need "
                f"{in_window} window slots but window_frames is {self.window_frames}"
            )

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
        device = self.slot_frame.device
        if isinstance(first_frame, torch.Tensor):
            frames = first_frame.to(device, torch.int64) + torch.arange(n_frames, device=device)
        else:
            frames = torch.arange(first_frame, first_frame + n_frames, device=device)
            self.frames_written = max(self.frames_written, first_frame + n_frames)
        self.slot_frame.index_copy_(0, slots.to(device, torch.int64), frames)

    def resident_prefix_tokens(self) -> int:
        """Tokens in the resident prefix when frames were written in order from frame 0.

        Resident slots then always form a prefix [0, n) of the ring, and attention that
        needs no mask can run on k[:, :n] directly (key order does not matter to softmax).
        """
        return min(self.n_slots, self.frames_written) * self.tokens_per_frame

    def reset(self) -> None:
        self.slot_frame.fill_(-1)
        self.frames_written = 0
