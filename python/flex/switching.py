"""Prompt switches while a stream runs: the recache modes, the clean latents they need, the
schedule check and the :class:`Stream` handle that :meth:`flex.pipeline.Pipeline.stream` returns.

A switch is an event of the cache: the new prompt's cross-attention K/V are computed once, and
:func:`recache_resident` recomputes the self-attention K/V of the resident frames the mode names.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .cache import ModelKVCache, TextCache
from .checks import check_int
from .positions import frame_positions


def check_prompt_schedule(text, prompts, num_frames) -> tuple:
    """(first prompt, [(frame, prompt)] of the later switches) of ``Pipeline.stream``'s ``text`` and
    ``prompts`` arguments, validated."""
    if prompts is None:
        if text is None:
            raise ValueError("text must be given (or a prompts schedule starting at frame 0)")
        return text, []
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts must be a non-empty list of (first_frame, text) pairs")
    entries = []
    for i, entry in enumerate(prompts):
        if not isinstance(entry, (tuple, list)) or len(entry) != 2:
            raise ValueError(f"prompts[{i}] must be a (first_frame, text) pair, got {entry!r:.60}")
        frame = check_int(f"prompts[{i}] first_frame", entry[0], 0, num_frames - 1 if isinstance(num_frames, int)
                          and num_frames > 0 else None)
        if entries and frame <= entries[-1][0]:
            raise ValueError(f"prompts[{i}] first_frame {frame} must be after prompts[{i - 1}]'s "
                             f"{entries[-1][0]} (the schedule is sorted, one prompt per frame)")
        entries.append((frame, entry[1]))
    if text is None:
        if entries[0][0] != 0:
            raise ValueError(f"prompts[0] must start at frame 0 when text is None, got {entries[0][0]}")
        return entries[0][1], entries[1:]
    if entries[0][0] == 0:
        raise ValueError("text and prompts[0] both give the prompt of frame 0: pass text=None")
    return text, entries


def recache_resident(pipe, mode: str, cache: ModelKVCache, text: TextCache, context: "ContextLatents", f0: int,
            num_frames: int) -> None:
    """At a switch before chunk f0: recompute the K/V of the resident frames ``mode`` names
    under the new prompt, in one pass at t = context_noise placed like the previous chunk's
    clean pass (its RoPE thetas, shift and scale). ``pipe`` is the stream's :class:`flex.pipeline.Pipeline`."""
    if mode == "none" or f0 == 0:
        return
    resident = cache.table.resident_frames()
    frames = resident if mode == "all" else [f for f in resident if f >= cache.sink_frames]
    if not frames:
        return
    n = pipe.config.chunk_frames
    rope, shift, scale = pipe.chunk_positions(f0 - n, n, num_frames)
    pos = frame_positions(rope, cache.table, torch.tensor(frames, device=cache.device), cache.grid_h,
                          cache.grid_w, position_shift=shift, rotate_on_load=pipe.config.rotate_on_load,
                          scale=scale, dtype=pipe.model.table_dtype)
    x = context.latents(frames)
    t = torch.full((x.shape[0], len(frames)), pipe.context_noise, device=x.device)
    pipe.model.recache(x, t, text, cache, frames, pos, pipe.backend, **pipe._parallel_kw)


RECACHE_MODES = ("window", "all", "none")
"""What a prompt switch does to the cached K/V:

* ``"window"`` (default): the resident window frames are recomputed under the new prompt; the
  sink frames keep the K/V of the prompt they were generated with (LongLive with
  ``global_sink``: its sink survives switches);
* ``"all"``: every resident frame, the sink included, is recomputed under the new prompt;
* ``"none"``: the cached K/V stay as they are; only the cross-attention K/V change.

Recomputed frames run in one pass at t = context_noise, each attending to every resident
frame, as LongLive's ``_recache_after_switch`` runs its last ``local_attn_size`` frames.
"""


class ContextLatents:
    """The clean latents of the resident frames (the sink frames and the last window), kept
    so that their K/V can be recomputed at a prompt switch."""

    def __init__(self, sink_frames: int, window_frames: int):
        self.sink_frames, self.window_frames = sink_frames, window_frames
        self.frames: dict[int, torch.Tensor] = {}

    def add(self, first_frame: int, x0: torch.Tensor) -> None:
        """Record chunk x0 [B, n, ...] of frames [first_frame, +n); forget evicted frames."""
        end = first_frame + x0.shape[1]
        for i in range(x0.shape[1]):
            self.frames[first_frame + i] = x0[:, i]
        keep = end - self.window_frames
        for f in [f for f in self.frames if self.sink_frames <= f < keep]:
            del self.frames[f]

    def latents(self, frames) -> torch.Tensor:
        return torch.stack([self.frames[f] for f in frames], dim=1)


class Stream:
    """A running generation: iterate it for each chunk's latents; ``switch(text)`` changes the
    prompt before the next chunk (its K/V are computed once, at the switch); ``close()`` stops."""

    def __init__(self, pipeline, batch: int, recache: str):
        self.pipeline, self.batch, self.recache = pipeline, batch, recache
        self.switches: list[int] = []  # first frames of the chunks that started with a new prompt
        self._pending = None
        self._chunks: Iterator[torch.Tensor] | None = None

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> torch.Tensor:
        return next(self._chunks)

    def switch(self, text: torch.Tensor | TextCache) -> None:
        """Use ``text`` (embeddings [B, L, text_dim] or a TextCache) from the next chunk on."""
        batch = self.pipeline.text_batch(text)
        if batch != self.batch:
            raise ValueError(f"text has batch {batch}, the stream has batch {self.batch}")
        self._pending = self.pipeline.encode_prompt(text)

    def _take_switch(self) -> TextCache | None:
        text, self._pending = self._pending, None
        return text

    def close(self) -> None:
        self._chunks.close()


__all__ = ["ContextLatents", "RECACHE_MODES", "Stream", "check_prompt_schedule", "recache_resident"]
