"""PNG plots of metric curves over time: one panel per metric, one line per video or variant."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping

from .series import MetricSeries


def plot_curves(path, curves: Mapping[str, Mapping[str, MetricSeries]], times: Mapping[str, list[float]],
                title: str = "", sink: Mapping[str, dict] | None = None) -> Path:
    """Write a PNG: ``curves[label][metric]`` is a series, ``times[label][k]`` the centre of
    segment k in seconds (see VideoReport.segment_centres); ``sink[label]`` a VideoReport's
    sink_collapse result, drawn as one more panel with its collapse events marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from .quality_score import DERIVED
    from .registry import ALL_METRICS

    metrics = [m for m in ALL_METRICS + DERIVED if any(m in c for c in curves.values())]
    sink = {k: v for k, v in (sink or {}).items() if v}
    if not metrics and not sink:
        raise ValueError("plot_curves: no metric curves to plot")
    panels = len(metrics) + bool(sink)
    cols = min(3, panels)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        for label, series in curves.items():
            s = series.get(metric)
            if s is None or not s.values:
                continue
            x = times[label][:len(s.values)]
            ax.plot(x, s.values, marker="o", markersize=3, label=label)
        ax.set_title(metric.replace("_", " "), fontsize=10)
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
    if sink:
        ax = axes.flat[len(metrics)]
        for label, result in sink.items():
            d = result["normalised_distance"]
            ax.plot([t / result["fps"] for t in range(len(d))], d, linewidth=0.8, label=label)
            for e in result["events"]:
                ax.axvline(e["time_s"], color="red", alpha=0.5, linewidth=0.8)
                ax.annotate(f"frame {e['frame']}", (e["time_s"], e["normalised_distance"]), fontsize=6, color="red")
        ax.set_title("distance to the sink frames (red: collapse)", fontsize=10)
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    if len(curves) > 1:
        axes.flat[0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return _write_png(fig, path)


def plot_phase(path, reports: Mapping, title: str = "") -> Path:
    """Write a PNG: the excess phase concentration of each policy over latent frames, peaks marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(reports), 1, figsize=(10, 1.8 * len(reports) + 0.6), squeeze=False, sharex=True)
    for ax, (name, r) in zip(axes[:, 0], reports.items()):
        ax.plot(r.frames, r.excess, linewidth=0.8)
        for frame, value in r.peaks[:5]:
            ax.plot([frame], [value], "rv", markersize=5)
            ax.annotate(str(frame), (frame, value), fontsize=7, xytext=(2, 2), textcoords="offset points")
        ax.set_ylabel(name, fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("latent frame")
    if title:
        fig.suptitle(title, fontsize=10)
    return _write_png(fig, path)


def _write_png(fig, path) -> Path:
    """Lay out ``fig``, write it atomically as a PNG and close it."""
    import matplotlib.pyplot as plt

    from .report import atomic_write_bytes

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
