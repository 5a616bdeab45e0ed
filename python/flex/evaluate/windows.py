"""FramePack's Δdrift windows: the first and the last 15 % of a video's frames.

FramePack (Zhang & Agrawala, "Packing Input Frame Context in Next-Frame Prediction Models for
Video Generation", arXiv 2504.12626, section on anti-drifting evaluation) defines the drift of a
metric as |metric on the first 15 % of the frames - metric on the last 15 %|. Here each window
is measured as any stretch of video is: cut into segments of the evaluation's segment length
(:func:`flex.evaluate.segments.segment_bounds`; one piece when the window is shorter than a
segment, which is FramePack's definition exactly) and the segment values averaged.
"""
from __future__ import annotations

import math
from itertools import islice
from typing import Callable, Iterable, Iterator

from ..checks import check_int
from .pixels import as_frames
from .segments import iter_segments

FRACTION = 0.15


def window_frames(n_frames: int) -> int:
    """Frames in each window: 15 % of the video rounded, at least 2 (a pair), at most all."""
    check_int("n_frames", n_frames, 1)
    return min(n_frames, max(2, round(FRACTION * n_frames)))


def window_bounds(n_frames: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((start, stop) of the head window, (start, stop) of the tail window)."""
    k = window_frames(n_frames)
    return (0, k), (n_frames - k, n_frames)


def measure_windows(reopen: Callable[[], Iterable], n_frames: int, length: int, fps: float,
                    scorers: dict) -> tuple[dict[str, tuple[float, float]], dict[str, str]]:
    """({metric: (head value, tail value)}, {metric: error}) of ``scorers`` on the two windows.

    ``reopen()`` gives a fresh stream of the video's frames (read twice, one segment in memory).
    """
    values: dict[str, list[list[float]]] = {m: [[], []] for m in scorers}
    errors: dict[str, str] = {}
    for w, (start, stop) in enumerate(window_bounds(n_frames)):
        for _, _, seg in iter_segments(_slice(reopen(), start, stop), length):
            seg = as_frames(seg)
            for m, scorer in scorers.items():
                if m in errors:
                    continue
                try:
                    values[m][w].append(float(scorer(seg, fps)))
                except (ValueError, RuntimeError) as err:
                    errors[m] = f"{m} (Δdrift windows): {err}"
    return ({m: (math.fsum(h) / len(h), math.fsum(t) / len(t)) for m, (h, t) in values.items()
             if m not in errors and h and t}, errors)


def _slice(frames: Iterable, start: int, stop: int) -> Iterator:
    return islice(iter(frames), start, stop)
