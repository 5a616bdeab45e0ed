"""Prompt switches while a stream runs: the switch modes, the rule that places each switch on
a chunk, the clean latents a re-cache needs and the :class:`Stream` handle that
:meth:`flex.pipeline.Pipeline.stream` returns.

A switch is an event of the cache: the new prompt's cross-attention K/V are computed once, and
:func:`apply_switch` does what the switch's mode says to the self-attention cache.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from .cache import ModelKVCache, TextCache
from .checks import check_int
from .positions import frame_positions

SWITCH_MODES = ("window", "all", "none", "longlive", "flush", "cut")
"""What a prompt switch does to the cached K/V (the ``recache`` setting picks the default mode
of a stream's switches; a schedule entry or ``Stream.switch(text, mode=...)`` may pick another):

* ``"window"`` (default): the resident window frames are recomputed under the new prompt; the
  sink frames keep the K/V of the prompt they were generated with;
* ``"all"``: every resident frame, the sink included, is recomputed under the new prompt;
* ``"none"``: the cached K/V stay as they are; only the cross-attention K/V change;
* ``"longlive"``: LongLive v1.0's ``_recache_after_switch``: ``"all"`` while the switch frame
  is within the first sink + window frames (LongLive re-runs its last ``local_attn_size``
  frames from frame 0 and overwrites its sink), ``"window"`` after (its sink is protected);
  and at most one prompt per chunk (see :func:`switch_starts`);
* ``"flush"``: infinity-RoPE's KV Flush: the cache keeps only the sink and the last generated
  frame, nothing is re-encoded; the ring refills from there;
* ``"cut"``: infinity-RoPE's RoPE Cut: nothing is re-encoded, and every frame from the switch on
  sits ``Stream.cut_jump`` temporal positions further ahead (default sink + window frames),
  so the new prompt starts a new shot in the same stream (needs pre-rotated keys: not with
  ``dynamic`` or window positions).

Recomputed frames run in one pass at t = context_noise, each attending to every resident
frame, as LongLive's ``_recache_after_switch`` runs its last ``local_attn_size`` frames.
With ``global_sink=False`` (LongLive's ``global_sink: false``) a re-encoding switch after the
first sink + window frames recomputes the last sink + window frames, and the oldest sink-size
of them become the sink from then on (the ring keeps the rest).
"""
RECACHE_MODES = SWITCH_MODES
ONE_PER_CHUNK = ("longlive",)  # modes that defer a switch to the next chunk instead of refusing it


class SwitchError(ValueError):
    """A switch or schedule that cannot be honoured; ``setting`` names the argument at fault."""

    def __init__(self, setting: str, message: str):
        self.setting = setting
        super().__init__(message)


def switch_starts(frames: Sequence[int], chunk_frames: int, mode: str, num_frames: int | None = None) -> list[int]:
    """The first frame of the chunk where each switch of a schedule (strictly increasing switch
    frames) takes effect. The rule, written once:

    * a switch at frame s takes effect before the first chunk that starts at or after s (LongLive:
      ``current_start_frame >= switch_frame``), i.e. at s rounded up to a multiple of chunk_frames;
    * a chunk shows one prompt: when two switches fall in one chunk, a mode in ``ONE_PER_CHUNK``
      (``"longlive"``) moves the later one to the next chunk (with 3-frame chunks, switches at 16
      and 17 take effect at 18 and 21, as LongLive advances one prompt per chunk); any other
      mode refuses the schedule (SwitchError naming ``prompts``);
    * a switch that would take effect at or after ``num_frames`` is refused (it would never show).
    """
    starts: list[int] = []
    for i, frame in enumerate(frames):
        start = -(-frame // chunk_frames) * chunk_frames
        if starts and start <= starts[-1]:
            if mode not in ONE_PER_CHUNK:
                raise SwitchError("prompts", f"prompts: the switches at frames {frames[i - 1]} and {frame} fall in the "
                                  f"same {chunk_frames}-frame chunk (starting at frame {starts[-1]}) and mode "
                                  f"{mode!r} shows one prompt per chunk: move one to another chunk, or use "
                                  f"recache='longlive' (one switch per chunk, the later ones deferred)")
            start = starts[-1] + chunk_frames
        if num_frames is not None and start >= num_frames:
            raise SwitchError("prompts", f"prompts: the switch at frame {frame} would take effect at frame {start}, "
                              f"past the video's {num_frames} frames")
        starts.append(start)
    return starts


def check_mode(name: str, mode, config=None, setting: str | None = None) -> str:
    """A switch mode; with the stream's FlexConfig, also one that config can run. ``setting``:
    the argument the SwitchError names (default ``name``)."""
    setting = setting or name
    if mode not in SWITCH_MODES:
        raise SwitchError(setting, f"{name} must be one of {SWITCH_MODES}, got {mode!r:.60}")
    if mode == "cut" and config is not None and config.rotate_on_load:
        raise SwitchError(setting, f"{name} 'cut' needs pre-rotated keys: not with dynamic or window positions")
    return mode


def check_switch_settings(config, recache: str, global_sink: bool) -> None:
    """A stream's default switch mode and sink rule, against its FlexConfig."""
    check_mode("recache", recache, config)
    if not global_sink and config.position_policy == "window":
        raise SwitchError("global_sink", "global_sink=False moves the sink, which window positions place at "
                                         "0..sink-1: use absolute positions")


def check_prompt_schedule(text, prompts, num_frames, config=None) -> tuple:
    """(first prompt, [(frame, prompt, mode or None)] of the later switches) of ``Pipeline.stream``'s
    ``text`` and ``prompts`` arguments, validated (entries are (first_frame, text) or
    (first_frame, text, mode) with a mode of :data:`SWITCH_MODES`)."""
    if prompts is None:
        if text is None:
            raise ValueError("text must be given (or a prompts schedule starting at frame 0)")
        return text, []
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
        raise ValueError("prompts must be a non-empty list of (first_frame, text) pairs")
    entries = []
    for i, entry in enumerate(prompts):
        if not isinstance(entry, (tuple, list)) or len(entry) not in (2, 3):
            raise ValueError(f"prompts[{i}] must be a (first_frame, text) pair or a (first_frame, text, mode) triple, "
                             f"got {entry!r:.60}")
        frame = check_int(f"prompts[{i}] first_frame", entry[0], 0, num_frames - 1 if isinstance(num_frames, int)
                          and num_frames > 0 else None)
        if entries and frame <= entries[-1][0]:
            raise ValueError(f"prompts[{i}] first_frame {frame} must be after prompts[{i - 1}]'s "
                             f"{entries[-1][0]} (the schedule is sorted, one prompt per frame)")
        mode = check_mode(f"prompts[{i}] mode", entry[2], config, "prompts") if len(entry) == 3 else None
        entries.append((frame, entry[1], mode))
    if text is None:
        if entries[0][0] != 0:
            raise ValueError(f"prompts[0] must start at frame 0 when text is None, got {entries[0][0]}")
        return entries[0][1], entries[1:]
    if entries[0][0] == 0:
        raise ValueError("text and prompts[0] both give the prompt of frame 0: pass text=None")
    return text, entries


def apply_switch(pipe, stream: "Stream", mode: str, cache: ModelKVCache, text: TextCache,
                 context: "ContextLatents", f0: int, num_frames: int) -> None:
    """What a switch before chunk f0 does to the self-attention cache (see :data:`SWITCH_MODES`).
    ``pipe`` is the stream's :class:`flex.pipeline.Pipeline`."""
    table = cache.table
    cap = cache.sink_frames + cache.window_frames
    if f0 == 0 or mode == "none":
        return
    if mode == "flush":
        table.flush(f0 - 1)
        return
    if mode == "cut":
        stream.cuts.append((f0, cap if stream.cut_jump is None else stream.cut_jump))
        return
    if not stream.global_sink and f0 > cap:  # LongLive's global_sink false: the sink moves
        table.rebase(f0 - cap)
        frames = list(range(f0 - cap, f0))
    else:
        resident = table.resident_frames()
        everything = mode == "all" or not stream.global_sink or (mode == "longlive" and f0 <= cap)
        frames = resident if everything else [f for f in resident if f >= table.sink_first + cache.sink_frames]
    if frames:
        _recompute(pipe, stream, cache, text, context, frames, f0, num_frames)


def _recompute(pipe, stream, cache, text, context, frames, f0, num_frames) -> None:
    """Recompute the K/V of ``frames`` under ``text`` in one pass at t = context_noise, placed like
    the previous chunk's clean pass (its RoPE thetas, shift and scale; each frame's RoPE cuts)."""
    n = pipe.config.chunk_frames
    rope, shift, scale = pipe.chunk_positions(f0 - n, n, num_frames)
    index = torch.tensor(frames, device=cache.device)
    if stream.cuts:
        shift = shift - sum(jump * (index >= frame) for frame, jump in stream.cuts)
    pos = frame_positions(rope, cache.table, index, cache.grid_h, cache.grid_w, position_shift=shift,
                          rotate_on_load=pipe.config.rotate_on_load, scale=scale, dtype=pipe.model.table_dtype)
    x = context.latents(frames)
    t = torch.full((x.shape[0], len(frames)), pipe.context_noise, device=x.device)
    pipe.model.recache(x, t, text, cache, frames, pos, pipe.backend, **pipe._parallel_kw)


class ContextLatents:
    """The clean latents of the sink frames and of the last ``window_frames`` frames, kept so that
    their K/V can be recomputed at a prompt switch (the stream keeps sink + window of them: the
    frames ``global_sink=False`` recomputes)."""

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
    """A running generation: iterate it for each chunk's latents; ``switch(text, mode=None)``
    changes the prompt before the next chunk (its K/V are computed once, at the switch);
    ``close()`` stops.

    ``recache`` is the default mode of its switches, ``global_sink`` whether the sink survives
    re-encoding switches (see :data:`SWITCH_MODES`); ``cut_jump`` the temporal positions a RoPE
    cut jumps (None: sink + window frames). ``switches`` lists the first frames of the chunks that
    started with a new prompt, ``cuts`` the (frame, jump) of each RoPE cut so far.
    """

    def __init__(self, pipeline, batch: int, recache: str, global_sink: bool = True):
        self.pipeline, self.batch, self.recache, self.global_sink = pipeline, batch, recache, global_sink
        self.cut_jump: int | None = None
        self.switches: list[int] = []
        self.cuts: list[tuple[int, int]] = []
        self._pending: list[tuple[TextCache, str]] = []
        self._chunks: Iterator[torch.Tensor] | None = None

    def __iter__(self) -> "Stream":
        return self

    def __next__(self) -> torch.Tensor:
        return next(self._chunks)

    def switch(self, text: torch.Tensor | TextCache, mode: str | None = None) -> None:
        """Use ``text`` (embeddings [B, L, text_dim] or a TextCache) from the next chunk on, with
        switch ``mode`` (default: the stream's ``recache``). Under a mode of ``ONE_PER_CHUNK``
        (``"longlive"``) switches made before one chunk take effect one per chunk, in order;
        under the others the last one before a chunk replaces the earlier ones."""
        mode = self.recache if mode is None else check_mode("mode", mode, self.pipeline.config)
        batch = self.pipeline.text_batch(text)
        if batch != self.batch:
            raise ValueError(f"text has batch {batch}, the stream has batch {self.batch}")
        entry = (self.pipeline.encode_prompt(text), mode)
        if self.recache in ONE_PER_CHUNK:
            self._pending.append(entry)
        else:
            self._pending = [entry]

    def position_offset(self, frame: int) -> int:
        """How far the RoPE cuts so far move frame ``frame`` ahead."""
        return sum(jump for first, jump in self.cuts if frame >= first)

    def _take_switch(self) -> tuple[TextCache, str] | None:
        return self._pending.pop(0) if self._pending else None

    def close(self) -> None:
        self._chunks.close()


__all__ = ["ContextLatents", "ONE_PER_CHUNK", "RECACHE_MODES", "SWITCH_MODES", "Stream", "SwitchError", "apply_switch",
           "check_mode", "check_prompt_schedule", "switch_starts"]
