"""One metric of one video over time: its value per segment, the mean and the drift."""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class MetricSeries:
    """``values[k]``: the metric on segment k. ``mean``: their mean (VBench-Long's per-video
    score); ``drift``: last segment minus first (signed; 0 for one segment)."""

    name: str
    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values) if self.values else float("nan")

    @property
    def drift(self) -> float:
        return self.values[-1] - self.values[0] if self.values else float("nan")

    def to_dict(self) -> dict:
        return {"mean": self.mean, "drift": self.drift, "segments": list(self.values)}


def mean_series(name: str, series: list[MetricSeries]) -> MetricSeries:
    """Segment-wise mean of several videos' series (cut to the shortest), e.g. over prompts."""
    if not series:
        return MetricSeries(name)
    n = min(len(s.values) for s in series)
    return MetricSeries(name, [math.fsum(s.values[k] for s in series) / len(series) for k in range(n)])
