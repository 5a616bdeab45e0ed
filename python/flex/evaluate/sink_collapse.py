"""Sink collapse (LoL, arXiv 2601.16914): does the video snap back to its first frames?

With an attention sink, a streaming model can abruptly regenerate its sink frames at fixed
latent indices (LoL's "sink collapse"). LoL shows it as the per-frame distance to the sink
frames dropping sharply. Here, for every decoded frame t after the sink:

    distance(t) = min over sink frames s of RMS(frame t - frame s)        (pixels in 0..1,
                                                                           frames area-resized
                                                                           to <= 64 px a side)
    normalised(t) = distance(t) / max over t of distance(t)               (0..1, LoL's scale)

The sink is the first ``sink_latent_frames`` latent frames = 4 * n - 3 pixel frames (Wan's VAE:
latent 0 is one frame, the others four each; 3 latent frames -> 9 frames). A collapse event is
a frame whose normalised distance falls below ``drop`` times the median of the preceding
``window_seconds`` (the first frame of each such fall is reported, with its index and time).

With an ``encoder`` (uint8 frames [T, H, W, 3] -> features [T, D]; the evaluator passes DINO's
CLS feature when subject consistency is measured) the same is done on the feature distance
1 - max over sink frames of the cosine similarity ("feature_distance", "feature_events").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..checks import check_float, check_int

SIDE = 64
DROP = 0.5
WINDOW_SECONDS = 2.0


def sink_pixel_frames(sink_latent_frames: int) -> int:
    check_int("sink_latent_frames", sink_latent_frames, 1)
    return 4 * sink_latent_frames - 3


def small(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3 * h * w] in 0..1, area-resized so each side is <= SIDE."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0
    h, w = x.shape[-2:]
    scale = min(1.0, SIDE / max(h, w))
    if scale < 1.0:
        x = F.interpolate(x, size=(max(1, round(h * scale)), max(1, round(w * scale))), mode="area")
    return x.flatten(1).double()


def collapse_events(normalised: list[float], first: int, window: int, drop: float = DROP) -> list[int]:
    """Frame indices where ``normalised[t]`` first falls below drop * median(previous ``window``)."""
    events, below = [], False
    for t in range(first + window, len(normalised)):
        history = torch.tensor(normalised[t - window:t])
        now = normalised[t] < drop * float(history.median())
        if now and not below:
            events.append(t)
        below = now
    return events


@dataclass
class SinkCollapseTracker:
    """Fed the segments of one video in order (overlaps allowed); ``result()`` at the end."""

    fps: float
    sink_latent_frames: int = 3
    drop: float = DROP
    window_seconds: float = WINDOW_SECONDS
    encoder: Callable | None = None
    sinks: list = field(default_factory=list)
    distances: list = field(default_factory=list)
    sink_features: list = field(default_factory=list)
    feature_distances: list = field(default_factory=list)
    seen: int = 0

    def __post_init__(self):
        check_float("fps", self.fps, 0.0, low_open=True)
        self.n_sink = sink_pixel_frames(self.sink_latent_frames)
        check_float("drop", self.drop, 0.0, 1.0, low_open=True)
        check_float("window_seconds", self.window_seconds, 0.0, low_open=True)

    def update(self, start: int, frames: torch.Tensor) -> None:
        """Frames [T, H, W, 3] uint8 whose first is frame ``start``; frames already seen are skipped."""
        skip = self.seen - start
        if skip >= frames.shape[0]:
            return
        new = frames[max(0, skip):]
        feats = None if self.encoder is None else F.normalize(self.encoder(new).double(), dim=-1)
        for k, row in enumerate(small(new)):
            if self.seen < self.n_sink:
                self.sinks.append(row)
                self.distances.append(0.0)
            else:
                d = torch.stack(self.sinks) - row
                self.distances.append(float(d.pow(2).mean(1).sqrt().min()))
            if feats is not None:
                if self.seen < self.n_sink:
                    self.sink_features.append(feats[k])
                    self.feature_distances.append(0.0)
                else:
                    self.feature_distances.append(1.0 - float((torch.stack(self.sink_features) @ feats[k]).max()))
            self.seen += 1

    def _events(self, distances: list[float]) -> tuple[list[float], list[dict]]:
        top = max(distances, default=0.0)
        normalised = [d / top if top > 0 else 0.0 for d in distances]
        window = max(2, round(self.window_seconds * self.fps))
        events = collapse_events(normalised, self.n_sink, window, self.drop) if self.seen > self.n_sink else []
        return normalised, [{"frame": t, "time_s": t / self.fps, "latent_frame": (t + 3) // 4,
                             "normalised_distance": normalised[t]} for t in events]

    def result(self) -> dict:
        normalised, events = self._events(self.distances)
        out = {"fps": self.fps, "sink_frames": self.n_sink, "drop": self.drop,
               "window_frames": max(2, round(self.window_seconds * self.fps)),
               "distance": self.distances, "normalised_distance": normalised, "events": events}
        if self.encoder is not None:
            normalised, events = self._events(self.feature_distances)
            out.update(feature_distance=self.feature_distances, normalised_feature_distance=normalised,
                       feature_events=events)
        return out
