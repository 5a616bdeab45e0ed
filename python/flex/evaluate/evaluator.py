"""Evaluating videos: every chosen metric on every segment, with per-metric errors and timings.

A metric whose weights or packages are missing is reported in ``errors`` (naming the file and
the metric) and the other metrics still run; a metric that fails on one video is reported for
that video only.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from .frames import iter_video_frames, video_fps
from .pixels import as_frames
from .quality_score import LABELS, derived_series
from .registry import ALL_METRICS, check_metrics, metric_module
from .segments import DEFAULT_SEGMENT_SECONDS, iter_segments, segment_length
from .series import MetricSeries
from .sink_collapse import SinkCollapseTracker
from .windows import measure_windows

REPORT_VERSION = 2  # 2: Δdrift windows per metric, derived quality scores


@dataclass
class VideoReport:
    """The evaluation of one video (``to_dict`` is the JSON written per video)."""

    video: str
    fps: float
    frames: int
    segment_seconds: float
    segments: list[tuple[int, int]] = field(default_factory=list)
    metrics: dict[str, MetricSeries] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per metric, and "decode"
    sink_collapse: dict | None = None  # flex.evaluate.sink_collapse: per-frame distance to the sink, events

    @property
    def seconds(self) -> float:
        return self.frames / self.fps if self.fps > 0 else 0.0

    def segment_centres(self) -> list[float]:
        """Centre of each segment in seconds (the x of the curves)."""
        return [(a + b) / 2 / self.fps for a, b in self.segments]

    def derived(self) -> dict[str, MetricSeries]:
        """VBench's Quality Score and the plain quality mean (when all seven dimensions were measured)."""
        return derived_series(self.metrics)

    def to_dict(self) -> dict:
        return {
            "version": REPORT_VERSION, "video": self.video, "fps": self.fps, "frames": self.frames,
            "seconds": self.seconds, "segment_seconds": self.segment_seconds,
            "segments": [{"start_frame": a, "stop_frame": b, "start_s": a / self.fps, "stop_s": b / self.fps}
                         for a, b in self.segments],
            "metrics": {name: s.to_dict() for name, s in self.metrics.items()},
            "derived": {name: {**s.to_dict(), "label": LABELS[name]} for name, s in self.derived().items()},
            "sink_collapse": self.sink_collapse,
            "errors": dict(self.errors), "timings_s": dict(self.timings),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "VideoReport":
        return cls(video=d["video"], fps=d["fps"], frames=d["frames"], segment_seconds=d["segment_seconds"],
                   segments=[(s["start_frame"], s["stop_frame"]) for s in d["segments"]],
                   metrics={k: MetricSeries.from_dict(k, v) for k, v in d["metrics"].items()},
                   errors=dict(d.get("errors", {})), timings=dict(d.get("timings_s", {})),
                   sink_collapse=d.get("sink_collapse"))


class Evaluator:
    """Loads the chosen metrics once; evaluates any number of videos with them.

    metrics          names from flex.evaluate.ALL_METRICS (default: all)
    weights_dir      the weights folder (default $FLEX_EVAL_WEIGHTS); see flex.evaluate.weights
    device           torch device for the models ("cpu", "cuda", "auto")
    segment_seconds  length of the segments the long-video view uses (VBench-Long's clips)
    sink_latent_frames  the attention sink the sink-collapse check compares against (latent frames)
    """

    def __init__(self, metrics: Iterable[str] = ALL_METRICS, weights_dir=None, device="cpu",
                 segment_seconds: float = DEFAULT_SEGMENT_SECONDS, sink_latent_frames: int = 3):
        from ..checks import check_float, check_int

        self.sink_latent_frames = check_int("sink_latent_frames", sink_latent_frames, 1)
        self.metrics = check_metrics(metrics)
        self.segment_seconds = check_float("segment_seconds", segment_seconds, 0.0, low_open=True)
        self.device = _device(device)
        self.scorers: dict[str, Callable] = {}
        self.load_errors: dict[str, str] = {}
        for name in self.metrics:
            try:
                self.scorers[name] = metric_module(name).load(weights_dir, self.device)
            except (OSError, ImportError, ValueError, RuntimeError, KeyError) as err:
                self.load_errors[name] = f"{name}: {err}"

    def evaluate_frames(self, frames: Iterable[np.ndarray], fps: float, name: str = "<frames>",
                        on_segment: Callable[[int], None] | None = None,
                        reopen: Callable[[], Iterable[np.ndarray]] | None = None) -> VideoReport:
        """Evaluate a stream (or array [T, H, W, 3]) of uint8 RGB frames at ``fps``.

        Δdrift (the first and last 15 % of the frames, :mod:`flex.evaluate.windows`) needs the
        frames twice: ``reopen()`` gives a fresh stream (an array or tensor is its own).
        """
        if reopen is None and hasattr(frames, "shape"):
            reopen = lambda: frames  # noqa: E731
        length = segment_length(self.segment_seconds, fps)
        report = VideoReport(video=name, fps=float(fps), frames=0, segment_seconds=self.segment_seconds,
                             errors=dict(self.load_errors))
        report.timings = {"decode": 0.0, **{m: 0.0 for m in self.scorers}}
        live = dict(self.scorers)  # metrics still running on this video
        for m in live:
            report.metrics[m] = MetricSeries(m)
        stream = iter_segments(frames, length)
        sink = SinkCollapseTracker(float(fps), self.sink_latent_frames,
                                   encoder=getattr(self.scorers.get("subject_consistency"), "features", None))
        while True:
            t0 = time.perf_counter()
            try:
                start, stop, seg = next(stream)
            except StopIteration:
                break
            seg = as_frames(seg)  # bad input is the caller's error, not one metric's
            report.timings["decode"] += time.perf_counter() - t0
            report.segments.append((start, stop))
            report.frames = stop
            sink.update(start, seg)
            for m, scorer in list(live.items()):
                t0 = time.perf_counter()
                try:
                    report.metrics[m].values.append(float(scorer(seg, fps)))
                except (ValueError, RuntimeError) as err:
                    report.errors[m] = f"{m}: {err}"
                    del live[m], report.metrics[m]
                report.timings[m] += time.perf_counter() - t0
            if on_segment is not None:
                on_segment(len(report.segments))
        report.sink_collapse = sink.result()
        if reopen is not None and live:
            t0 = time.perf_counter()
            windows, errors = measure_windows(reopen, report.frames, length, fps, live)
            for m, (head, tail) in windows.items():
                report.metrics[m].head, report.metrics[m].tail = head, tail
            report.errors.update(errors)
            report.timings["delta_drift_windows"] = time.perf_counter() - t0
        return report

    def evaluate_video(self, path, on_segment=None) -> VideoReport:
        """Evaluate one video file (decoded as a stream: memory holds one segment).

        A file that cannot be read (missing, corrupt, or failing part-way) gives a report with no
        metrics whose ``errors["video"]`` says why, so that a batch goes on with the other videos.
        """
        import av

        try:
            return self.evaluate_frames(iter_video_frames(path), video_fps(path), name=str(path),
                                        on_segment=on_segment, reopen=lambda: iter_video_frames(path))
        except (OSError, ValueError, EOFError, av.FFmpegError) as err:
            return VideoReport(video=str(path), fps=0.0, frames=0, segment_seconds=self.segment_seconds,
                               errors={**self.load_errors, "video": f"video: cannot be read: {err}"})


def _device(name):
    import torch

    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {name!r} is not a torch device: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine (use cpu)")
    return device


def evaluate(videos, metrics: Iterable[str] = ALL_METRICS, weights_dir=None, device="cpu",
             segment_seconds: float = DEFAULT_SEGMENT_SECONDS) -> list[VideoReport]:
    """Evaluate video files (or folders of them); one :class:`VideoReport` per video."""
    from .frames import find_videos

    if isinstance(videos, (str, Path)):
        videos = [videos]
    evaluator = Evaluator(metrics, weights_dir, device, segment_seconds)
    return [evaluator.evaluate_video(p) for p in find_videos(videos)]
