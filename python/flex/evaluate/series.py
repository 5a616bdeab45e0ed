"""One metric of one video over time: its value per segment, the mean, the drift and Δdrift."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class MetricSeries:
    """``values[k]``: the metric on segment k. ``mean``: their mean (VBench-Long's per-video
    score); ``drift``: last segment minus first (signed; 0 for one segment).

    ``head`` / ``tail``: the metric on the first and on the last 15 % of the video's frames
    (see :mod:`flex.evaluate.windows`); ``delta_drift`` = |head - tail|, FramePack's Δdrift
    (NaN when the windows were not measured).
    """

    name: str
    values: list[float] = field(default_factory=list)
    head: float = float("nan")
    tail: float = float("nan")

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values) if self.values else float("nan")

    @property
    def drift(self) -> float:
        return self.values[-1] - self.values[0] if self.values else float("nan")

    @property
    def delta_drift(self) -> float:
        return abs(self.head - self.tail)

    def to_dict(self) -> dict:
        return {"mean": self.mean, "drift": self.drift, "delta_drift": self.delta_drift,
                "head_15pct": self.head, "tail_15pct": self.tail, "segments": list(self.values)}

    @classmethod
    def from_dict(cls, name: str, d: dict) -> "MetricSeries":
        nan = float("nan")
        head, tail = d.get("head_15pct"), d.get("tail_15pct")
        return cls(name, list(d["segments"]), nan if head is None else head, nan if tail is None else tail)


def mean_series(name: str, series: list[MetricSeries]) -> MetricSeries:
    """Segment-wise mean of several videos' series (cut to the shortest), e.g. over prompts;
    head and tail are the means of theirs."""
    if not series:
        return MetricSeries(name)
    n = min(len(s.values) for s in series)
    return MetricSeries(name, [math.fsum(s.values[k] for s in series) / len(series) for k in range(n)],
                        math.fsum(s.head for s in series) / len(series),
                        math.fsum(s.tail for s in series) / len(series))
