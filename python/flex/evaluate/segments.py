"""How a long video is cut into segments (VBench-Long's fixed-length clips).

A video of ``n`` frames with segments of ``length`` frames gives ``n // length`` full segments
and, when frames are left over, one last segment of ``length`` frames that ends on the last
frame and borrows the frames it lacks from the segment before it (VBench-Long does the same, so
every segment has the same length and the same statistics). A video shorter than one segment is
one segment of all its frames.
"""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator

import numpy as np

from ..checks import check_float, check_int

DEFAULT_SEGMENT_SECONDS = 5.0


def segment_length(segment_seconds: float, fps: float) -> int:
    """Frames per segment: ``segment_seconds * fps`` rounded, at least 2 (a pair of frames)."""
    check_float("segment_seconds", segment_seconds, 0.0, low_open=True)
    check_float("fps", fps, 0.0, low_open=True)
    return max(2, round(segment_seconds * fps))


def segment_bounds(n_frames: int, length: int) -> list[tuple[int, int]]:
    """[(start, stop)] frame ranges of the segments of a video (see the module docstring)."""
    check_int("n_frames", n_frames, 1)
    check_int("length", length, 1)
    bounds = [(i * length, (i + 1) * length) for i in range(n_frames // length)]
    if n_frames % length:
        bounds.append((max(0, n_frames - length), n_frames))
    return bounds


def iter_segments(frames: Iterable[np.ndarray], length: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """(start, stop, frames [T, H, W, 3]) of each segment of a stream of frames, in order.

    Holds at most ``length`` frames in memory; yields exactly the ranges of
    :func:`segment_bounds` for the number of frames the stream turns out to have.
    """
    check_int("length", length, 1)
    recent: deque = deque(maxlen=length)
    n = 0
    for frame in frames:
        recent.append(frame)
        n += 1
        if n % length == 0:
            yield n - length, n, np.stack(recent)
    if n == 0:
        raise ValueError("the video has no frames")
    if n % length:
        start = max(0, n - length)
        yield start, n, np.stack(list(recent)[start - n:])
