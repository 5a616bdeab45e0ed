"""Frozen-frame fraction: share of adjacent frame pairs that are (nearly) identical.

A pair is frozen when its mean absolute difference is below :data:`FROZEN_LEVELS` grey levels
(of 255), i.e. below what video coding noise of a still image leaves.
"""
from __future__ import annotations

from .pixels import adjacent_mean_abs_diff

NAME = "frozen_fraction"
SUMMARY = "share of adjacent frame pairs whose mean |difference| is below 0.5 of 255 levels"
WEIGHTS: tuple = ()
FROZEN_LEVELS = 0.5


def segment_value(frames, fps: float) -> float:
    diffs = adjacent_mean_abs_diff(frames)
    return float((diffs < FROZEN_LEVELS).double().mean()) if len(diffs) else 1.0


def load(weights_dir=None, device=None):
    return segment_value
