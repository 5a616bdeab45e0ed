"""Evaluating a batch of videos into a results folder.

    <out>/<video>.json    the video's report (every metric per segment, mean, drift, Δdrift, VBench's
                          Quality Score, the per-frame distance to the sink and collapse events, timings)
    <out>/<video>.png     its curves over time and the distance to the sink
    <out>/summary.csv     one row per video: each metric's mean and drift
    <out>/summary.md      the same as a markdown table
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

from .evaluator import Evaluator, VideoReport
from .frames import find_videos
from .plot import plot_curves
from .report import rows_from_reports, write_json, write_tables


def report_paths(out, video: Path) -> tuple[Path, Path]:
    out = Path(out)
    return out / f"{video.stem}.json", out / f"{video.stem}.png"


def evaluate_to_folder(inputs: Sequence, out, evaluator: Evaluator, *, plot: bool = True, progress: bool = True,
                       log: Callable[[str], None] = print) -> list[VideoReport]:
    """Evaluate the videos named by ``inputs`` (files or folders) and write the results under ``out``."""
    from tqdm.auto import tqdm

    videos = find_videos(inputs)
    stems = [v.stem for v in videos]
    clashes = sorted({s for s in stems if stems.count(s) > 1})
    if clashes:
        raise ValueError(f"videos with the same name would share a report in {str(out)!r}: {', '.join(clashes)}; "
                         f"evaluate them into separate --out folders")
    for name, message in evaluator.load_errors.items():
        log(f"error: {message}")
    reports = []
    for k, video in enumerate(videos):
        bar = tqdm(desc=f"[{k + 1}/{len(videos)}] {video.name}", unit="segment", disable=not progress,
                   file=sys.stderr)
        try:
            report = evaluator.evaluate_video(video, on_segment=lambda n: bar.update(1))
        finally:
            bar.close()
        json_path, png_path = report_paths(out, video)
        write_json(json_path, report.to_dict())
        if plot and (report.metrics or report.sink_collapse):
            plot_curves(png_path, {video.name: {**report.metrics, **report.derived()}},
                        {video.name: report.segment_centres()}, title=video.name,
                        sink={video.name: report.sink_collapse})
        for event in (report.sink_collapse or {}).get("events", []):
            log(f"sink collapse: {video.name} frame {event['frame']} ({event['time_s']:.2f} s, latent frame "
                f"{event['latent_frame']}): distance to the sink fell to {event['normalised_distance']:.3f}")
        for name, message in report.errors.items():
            if name not in evaluator.load_errors:
                log(f"error: {video}: {message}")
        reports.append(report)
    write_tables(out, rows_from_reports(reports))
    return reports
