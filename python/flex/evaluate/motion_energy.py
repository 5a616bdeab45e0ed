"""Motion energy: mean absolute difference of adjacent frames, as a fraction of full scale.

0 for a frozen video; PI's frozen motion shows as motion energy falling towards 0 over time.
"""
from __future__ import annotations

from .pixels import adjacent_mean_abs_diff

NAME = "motion_energy"
SUMMARY = "mean |frame[t+1] - frame[t]| over pixels and channels, 0..1 of full scale"
WEIGHTS: tuple = ()


def segment_value(frames, fps: float) -> float:
    diffs = adjacent_mean_abs_diff(frames)
    return float(diffs.mean()) / 255.0 if len(diffs) else 0.0


def load(weights_dir=None, device=None):
    return segment_value
