"""Measuring long-video quality: VBench's dimensions, weights-free health metrics, drift over time.

    from flex.evaluate import Evaluator, evaluate
    reports = evaluate("outputs/", metrics=HEALTH_METRICS)            # one VideoReport per video
    reports[0].metrics["contrast"].drift                               # last segment minus first

Every metric is computed per segment (default 5 s, like VBench-Long's clips); a video's score
is the mean over its segments and its drift is the last segment's value minus the first's.
Model-based metrics read their weights from a local folder (see :mod:`flex.evaluate.weights`).
``flex evaluate`` and ``flex experiment`` are :mod:`flex.cli.evaluate` (the experiment job: :mod:`flex.jobs.experiment`).
"""
from .batch import evaluate_to_folder
from .evaluator import Evaluator, VideoReport, evaluate
from .registry import ALL_METRICS, HEALTH_METRICS, MODEL_METRICS, metric_module
from .segments import DEFAULT_SEGMENT_SECONDS, segment_bounds, segment_length
from .series import MetricSeries
from .weights import LAYOUT as WEIGHTS_LAYOUT, MissingWeightsError

__all__ = [
    "ALL_METRICS", "DEFAULT_SEGMENT_SECONDS", "Evaluator", "HEALTH_METRICS", "MODEL_METRICS", "MetricSeries",
    "MissingWeightsError", "VideoReport", "WEIGHTS_LAYOUT", "evaluate", "evaluate_to_folder", "metric_module",
    "segment_bounds", "segment_length",
]
