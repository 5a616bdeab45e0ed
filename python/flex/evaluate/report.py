"""Writing results: a JSON per video, a CSV and a markdown table per folder, all atomically.

A table has one row per video (or variant) and, per metric, its mean, its drift (last
segment minus first) and FramePack's Δdrift (|first 15 % - last 15 %|); VBench's Quality Score
and the plain quality mean come last when all seven quality dimensions were measured.
Files appear complete or not at all (temporary file + os.replace).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Sequence

from .quality_score import DERIVED
from .registry import ALL_METRICS

COLUMN_KINDS = {"": "mean", "drift": "drift", "Δdrift": "delta_drift"}


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path, data) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=True) + "\n")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def table_columns(rows: Sequence[dict]) -> list[str]:
    """Metric columns present in any row, in the canonical order: ``<metric>``, ``<metric> drift``,
    ``<metric> Δdrift``."""
    present = {m for r in rows for m in r["metrics"]}
    cols = []
    for m in ALL_METRICS + DERIVED:
        if m in present:
            cols += [f"{m} {kind}".strip() for kind in COLUMN_KINDS]
    return cols


def _cell(row: dict, col: str):
    metric, _, kind = col.partition(" ")
    series = row["metrics"].get(metric)
    if series is None:
        return float("nan")
    return getattr(series, COLUMN_KINDS[kind])


def rows_from_reports(reports) -> list[dict]:
    """Table rows of video reports: {"labels": {"video": name}, "metrics": {name: MetricSeries}}."""
    return [{"labels": {"video": Path(r.video).name}, "metrics": {**r.metrics, **r.derived()}} for r in reports]


def _after(rows: Sequence[dict]) -> list[str]:
    """Columns after the metrics (a row's optional ``"after"`` dict, e.g. the generation speed)."""
    return list(dict.fromkeys(k for r in rows for k in r.get("after", {})))


def csv_table(rows: Sequence[dict]) -> str:
    labels = list(dict.fromkeys(k for r in rows for k in r["labels"]))
    cols, after = table_columns(rows), _after(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(labels + cols + after)
    for r in rows:
        writer.writerow([r["labels"].get(k, "") for k in labels] + [repr(_cell(r, c)) for c in cols]
                        + [r.get("after", {}).get(k, "") for k in after])
    return out.getvalue()


def markdown_table(rows: Sequence[dict], digits: int = 4) -> str:
    labels = list(dict.fromkeys(k for r in rows for k in r["labels"]))
    cols, after = table_columns(rows), _after(rows)

    def fmt(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{v:.{digits}f}"

    head = labels + cols + after
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["labels"].get(k, "")) for k in labels] + [fmt(_cell(r, c)) for c in cols]
        cells += [str(r.get("after", {}).get(k, "")) for k in after]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_tables(folder, rows: Sequence[dict], stem: str = "summary") -> tuple[Path, Path]:
    """``<folder>/<stem>.csv`` and ``<folder>/<stem>.md``."""
    folder = Path(folder)
    return (atomic_write_text(folder / f"{stem}.csv", csv_table(rows)),
            atomic_write_text(folder / f"{stem}.md", markdown_table(rows)))
