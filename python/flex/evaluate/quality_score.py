"""VBench's Quality Score and the plain mean of the seven quality dimensions.

Two numbers papers print under the name "quality":

* ``vbench_quality_score`` -- VBench's own: each dimension is min-max normalised with VBench's
  constants, weighted (dynamic degree counts half, the others 1), and the weighted sum is
  divided by the sum of the weights (5.5 / 6.5 ... = 6.5 for the seven dimensions).
* ``quality_mean`` -- the plain, unnormalised mean of the seven dimension values, which some
  long-video papers report instead.

Constants: Vchitect/VBench, ``scripts/constant.py`` (NORMALIZE_DIC, DIM_WEIGHT, QUALITY_LIST)
and the formula of ``scripts/cal_final_score.py`` (get_nomalized_score, get_quality_score), at
commit 45e79ec14e69a2187202c675d2dbce1a71843d53. Both are affine in the dimension values, so the
score of a video's means equals the mean of its per-segment scores.
"""
from __future__ import annotations

import math
from typing import Mapping

from .series import MetricSeries

QUALITY_DIMENSIONS = ("subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
                      "aesthetic_quality", "imaging_quality", "dynamic_degree")
NORMALIZE = {  # dimension -> (min, max) of VBench's NORMALIZE_DIC
    "subject_consistency": (0.1462, 1.0),
    "background_consistency": (0.2615, 1.0),
    "temporal_flickering": (0.6293, 1.0),
    "motion_smoothness": (0.706, 0.9975),
    "dynamic_degree": (0.0, 1.0),
    "aesthetic_quality": (0.0, 1.0),
    "imaging_quality": (0.0, 1.0),
}
WEIGHT = {d: (0.5 if d == "dynamic_degree" else 1.0) for d in QUALITY_DIMENSIONS}  # VBench's DIM_WEIGHT

SCORE = "vbench_quality_score"
MEAN = "quality_mean"
DERIVED = (SCORE, MEAN)
LABELS = {
    SCORE: "VBench Quality Score: weighted mean of the 7 min-max normalised quality dimensions "
           "(VBench's NORMALIZE_DIC / DIM_WEIGHT, dynamic degree weight 0.5)",
    MEAN: "plain mean of the 7 quality dimensions (unnormalised, equal weights)",
}


def vbench_quality_score(values: Mapping[str, float]) -> float:
    """VBench's quality score of one set of the seven dimension values (0..1 scale)."""
    _check(values)
    total = math.fsum(WEIGHT[d] * (values[d] - NORMALIZE[d][0]) / (NORMALIZE[d][1] - NORMALIZE[d][0])
                      for d in QUALITY_DIMENSIONS)
    return total / math.fsum(WEIGHT.values())


def quality_mean(values: Mapping[str, float]) -> float:
    """The plain mean of the seven dimension values."""
    _check(values)
    return math.fsum(values[d] for d in QUALITY_DIMENSIONS) / len(QUALITY_DIMENSIONS)


def _check(values: Mapping[str, float]) -> None:
    missing = [d for d in QUALITY_DIMENSIONS if d not in values]
    if missing:
        raise ValueError(f"values must hold all seven quality dimensions; missing: {', '.join(missing)}")


def derived_series(metrics: Mapping[str, MetricSeries]) -> dict[str, MetricSeries]:
    """Both scores per segment (and on the Δdrift windows), as series, when all seven
    dimensions were measured; else {}."""
    if not all(d in metrics and metrics[d].values for d in QUALITY_DIMENSIONS):
        return {}
    n = min(len(metrics[d].values) for d in QUALITY_DIMENSIONS)
    rows = [{d: metrics[d].values[k] for d in QUALITY_DIMENSIONS} for k in range(n)]
    head = {d: metrics[d].head for d in QUALITY_DIMENSIONS}
    tail = {d: metrics[d].tail for d in QUALITY_DIMENSIONS}
    return {name: MetricSeries(name, [fn(r) for r in rows], fn(head), fn(tail))
            for name, fn in ((SCORE, vbench_quality_score), (MEAN, quality_mean))}
