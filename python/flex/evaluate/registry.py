"""The table of metrics: name -> module (each module has NAME, SUMMARY, WEIGHTS and load())."""
from __future__ import annotations

from importlib import import_module

# Always available: no weights, no extra packages.
HEALTH_METRICS = ("motion_energy", "frozen_fraction", "saturation", "contrast", "sharpness",
                  "temporal_flickering")
# VBench's custom-video dimensions that need model weights (see flex.evaluate.weights).
MODEL_METRICS = ("subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality",
                 "dynamic_degree", "motion_smoothness")
ALL_METRICS = HEALTH_METRICS + MODEL_METRICS

_MODULES = {
    "motion_energy": "motion_energy", "frozen_fraction": "frozen_frames", "saturation": "saturation",
    "contrast": "contrast", "sharpness": "sharpness", "temporal_flickering": "temporal_flickering",
    "subject_consistency": "subject_consistency", "background_consistency": "background_consistency",
    "aesthetic_quality": "aesthetic_quality", "imaging_quality": "imaging_quality",
    "dynamic_degree": "dynamic_degree", "motion_smoothness": "motion_smoothness",
}


def metric_module(name: str):
    if name not in _MODULES:
        raise ValueError(f"metric must be one of {ALL_METRICS}, got {name!r}")
    return import_module(f"{__package__}.{_MODULES[name]}")


def check_metrics(metrics) -> tuple[str, ...]:
    """Metric names in a canonical order, unknown ones rejected, duplicates dropped."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(metrics)
    if not metrics:
        raise ValueError("metrics must name at least one metric")
    for name in metrics:
        metric_module(name)
    return tuple(m for m in ALL_METRICS if m in metrics)
